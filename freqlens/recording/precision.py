"""The precision of the recorder's probe passes.

A probe pass is inference only, so on a CPU it can run under bfloat16
autocast (about 1.5x faster on all-MiniLM-L6-v2, 2 cores: 0.0031 s per
example against 0.0045) -- where that is exact enough. ``"auto"`` decides on
the run's own probes: the step-0 snapshot is recorded in float32 and probed
once more under bfloat16; the later snapshots use bfloat16 only if the
largest difference in any probability is at most :data:`TOLERANCE`. At the
last snapshot one float32 pass checks again, and both differences go into
the trajectory's meta.json (``probe_precision``).

A check at the start is no guarantee for the end: on all-MiniLM-L6-v2
fine-tuned on SST-2 (``freqlens run analysis/sst2-addsent.toml``) bfloat16
agreed to 1.3e-4 at step 0 but differed by 6.6e-3 at step 126, as the model
grew confident. So ``"auto"`` is an opt-in (``record.precision``; the
default is ``"float32"``, which that run records in 17% of its wall time),
the last snapshot is stored in float32, and a difference above the
tolerance there is warned about.

Only models that compute in float32 on a CPU are candidates: on CUDA, and
for a model with a compute dtype of its own
(:func:`freqlens.models.set_compute_dtype`), probe passes keep the model's
precision.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from freqlens import distributed
from freqlens._checks import check_choice
from freqlens.models import check_compute_dtype, compute_dtype, model_device

PRECISIONS = ("auto", "float32", "bfloat16")
#: The largest difference in a probability that "auto" accepts from bfloat16.
TOLERANCE = 1e-3


def check_precision(value, name: str = "precision") -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else a ValueError naming ``name``."""
    return check_choice(value, name, PRECISIONS)


def candidate(precision: str, model: nn.Module, *, name: str = "precision") -> tuple[str, str]:
    """The precision the probe passes try, and why.

    Returns:
        (``"float32"`` or ``"bfloat16"``, a reason). ``"auto"`` tries bfloat16
        for a float32-compute model on a CPU in a single process, else float32;
        ``"bfloat16"`` is taken as asked (checked to work on the model's device).

    Raises:
        ValueError: naming ``name``, an unknown precision, or ``"bfloat16"`` on
            a device where autocast cannot compute in it.
    """
    check_precision(precision, name)
    device = model_device(model)
    if precision == "float32":
        return "float32", "asked for"
    if precision == "bfloat16":
        check_compute_dtype(torch.bfloat16, device, name=name)
        return "bfloat16", "asked for"
    if device.type != "cpu":
        return "float32", f"on {device.type} the probe passes keep the model's own precision"
    if compute_dtype(model) is not None:
        return "float32", f"the model computes in {str(compute_dtype(model)).removeprefix('torch.')}"
    if distributed.is_distributed():
        return "float32", "data-parallel recording keeps float32"
    try:
        check_compute_dtype(torch.bfloat16, device)
    except ValueError as error:
        return "float32", f"bfloat16 autocast does not work here ({error})"
    return "bfloat16", "candidate, checked against float32 on the probes"


def autocast(precision: str, model: nn.Module):
    """The context a probe pass runs in: bfloat16 autocast on the model's device, or none."""
    if precision == "bfloat16":
        return torch.autocast(model_device(model).type, dtype=torch.bfloat16)
    return nullcontext()
