"""Size probe sets to a recording budget, measured on the machine at hand.

A snapshot costs one forward pass per probe example, whatever the length of the
run, while training costs a forward and a backward pass per training example
and epoch. So the share of wall time spent recording is about::

    share = R S p / (R S p + N E t)

for R probe examples in all, S snapshots, N training examples, E epochs, and p,
t the seconds per probe and per training example. :func:`plan_probes` measures
p and t on the model and data of the run (one training batch, forward and
backward, with the random state restored and the gradients cleared, so the run
itself is unchanged) and solves for the R that keeps the share at ``budget``.

On a short CPU run this R is small (2,000 examples, 2 epochs, 50 snapshots at
10%: about 20 per set), on the paper's budget it is a few hundred. A spectrum
needs more than that, so a useful measurement comes first: ``freqlens run``
keeps at least ``record.min_probe_size`` (128) examples per clean and backdoor
set, leaving out the optional control set and thinning a log schedule (to no
fewer than ``record.min_snapshots``, 20) before going below it, and says in
the plan's warning when that costs more than the budget. The probe pass is
timed in the precision the recorder will use (``precision``: bfloat16 on a
CPU where it is exact enough, see :mod:`freqlens.recording.precision`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from freqlens._checks import check_positive_int
from freqlens.models import compute_autocast, model_device, predict_proba, trim_padding
from freqlens.recording import precision as _precision

SMALL_PROBE_SET = 32  # below this many examples per set, a spectrum is coarse
PROBE_TIMING_BATCHES = 4  # the probe pass is timed over this many probe batches of training examples


@dataclass(frozen=True)
class ProbePlan:
    """A probe-set size chosen to fit a recording budget, and what it rests on.

    Attributes:
        size: examples per probe set.
        num_sets: probe sets to record (the first ``num_sets`` offered).
        budget: the share of wall time allowed for recording.
        expected_share: the share this plan is expected to cost.
        train_seconds_per_example: measured (forward + backward; the optimizer
            update is not timed, so the plan errs on the small side).
        probe_seconds_per_example: measured (forward under inference_mode).
        snapshots: snapshots to take (fewer than asked for when ``limited``
            is ``"snapshots"``).
        limited: ``"budget"``, ``"minimum"`` (the budget allows fewer than the
            minimum, which was used anyway), ``"snapshots"`` (the minimum at
            fewer snapshots) or ``"maximum"``.
        requested_snapshots: the snapshots the schedule asked for.
        probe_precision: the precision the probe pass was timed in
            (``"float32"`` or ``"bfloat16"``; with ``"auto"``, bfloat16 where its
            probabilities agreed with float32 to 1e-3 on the timed batch).
    """

    size: int
    num_sets: int
    budget: float
    expected_share: float
    train_seconds_per_example: float
    probe_seconds_per_example: float
    snapshots: int
    limited: str
    requested_snapshots: int | None = None
    probe_precision: str = "float32"

    @property
    def note(self) -> str | None:
        """What the plan changed to fit the budget (a thinned schedule), or None: information, not a fault."""
        if self.limited != "snapshots":
            return None
        return (f"To keep {self.size} examples per probe set within a {self.budget:.0%} recording budget, the "
                f"log schedule takes {self.snapshots} of the {self.requested_snapshots} snapshots asked for "
                f"(recording expected at {self.expected_share:.0%} of the wall time); raise record.budget "
                "for more.")

    @property
    def warning(self) -> str | None:
        """A plain sentence when the measurement is coarse (small sets) or costs more than the
        budget (even the fewest examples and snapshots overrun it), else None."""
        over = (f"Recording is expected to take {self.expected_share:.0%} of the wall time, above the "
                f"{self.budget:.0%} budget: the fewest examples per set (record.min_probe_size) at the fewest "
                f"snapshots (record.min_snapshots) come first; raise record.budget to silence this, or lower "
                f"those for a cheaper, coarser spectrum." if self.expected_share > self.budget else "")
        if self.size >= SMALL_PROBE_SET:
            return over or None
        return (
            f"Probe sets of {self.size} examples (sized to a {self.budget:.0%} recording budget) give "
            f"a coarse spectrum; raise record.budget or set record.probe_size for a finer one. {over}"
        ).strip()

    def to_dict(self) -> dict:
        return {**asdict(self), "note": self.note}


def plan_probes(
    model: nn.Module,
    encodings: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    budget: float,
    train_examples: int,
    epochs: int,
    snapshots: int,
    num_sets: int,
    optional_sets: int = 0,
    batch_size: int = 32,
    probe_batch_size: int = 32,
    minimum: int = 16,
    maximum: int = 512,
    repeats: int = 2,
    margin: float = 0.85,
    min_snapshots: int | None = None,
    precision: str = "float32",
) -> ProbePlan:
    """Measure training and probing costs on ``model`` and size the probe sets.

    Args:
        model: the model about to be trained (left as it was: parameters,
            gradients, mode and random state).
        encodings, labels: the training examples; one training batch of them
            is timed forward and backward, and up to ``4 * probe_batch_size``
            of them in a probe pass (sorted by length into batches, as the
            recorder's passes are).
        budget: the share of wall time recording may take, in (0, 1).
        train_examples, epochs: the run's length.
        snapshots: the number of snapshots the schedule takes.
        num_sets: the number of probe sets.
        optional_sets: how many of them (the last ones) may be left out when
            the budget allows fewer than ``minimum`` examples per set.
        batch_size: training batch size.
        probe_batch_size: probe examples per forward pass.
        minimum, maximum: bounds on the size per set.
        repeats: timed repetitions (the fastest counts; the first call warms up).
        margin: the share of the budget the plan aims at, leaving room for
            per-snapshot costs the calibration does not see (writing the
            snapshot, a last partial batch, longer probe sentences).
        min_snapshots: when given (a log-spaced schedule, which can be
            thinned), a budget that cannot pay for ``minimum`` examples per
            set at every snapshot keeps the minimum and takes fewer
            snapshots, down to this many, instead of overrunning.
        precision: the precision the recorder's probe passes will use
            (``"auto"``, ``"float32"``, ``"bfloat16"``; see
            :mod:`freqlens.recording.precision`), so that the probe pass is
            timed as it will run. With ``"auto"``, bfloat16 is timed where the
            recorder would try it and its probabilities agree with float32 to
            within 1e-3 on the timed batch.

    Returns:
        A :class:`ProbePlan`.
    """
    if not (isinstance(budget, (int, float)) and 0.0 < budget < 1.0):
        raise ValueError(f"Expected `budget` in (0, 1) but got {budget!r}.")
    for value, name in ((train_examples, "train_examples"), (epochs, "epochs"), (snapshots, "snapshots"),
                        (num_sets, "num_sets"), (minimum, "minimum"), (maximum, "maximum")):
        check_positive_int(value, name)
    check_positive_int(optional_sets, "optional_sets", minimum=0)
    if optional_sets >= num_sets:
        raise ValueError(f"Expected `optional_sets` < `num_sets` ({num_sets}) but got {optional_sets}.")
    if minimum > maximum:
        raise ValueError(f"Expected `minimum` <= `maximum` but got {minimum} > {maximum}.")
    if not (isinstance(margin, (int, float)) and 0.0 < margin <= 1.0):
        raise ValueError(f"Expected `margin` in (0, 1] but got {margin!r}.")
    tried = _precision.candidate(precision, model)[0]
    rows = torch.arange(min(batch_size, len(labels)))
    batch = trim_padding({k: v[rows] for k, v in encodings.items()})
    train_time = _fastest(lambda: _train_pass(model, batch, labels[rows]), model, repeats) / len(rows)
    # The probe pass is timed as the recorder runs it: several batches' worth of examples, which
    # predict_proba sorts by length into batches with little padding.
    probe_rows = torch.arange(min(max(batch_size, PROBE_TIMING_BATCHES * probe_batch_size), len(labels)))
    probes = {k: v[probe_rows] for k, v in encodings.items()}
    used = tried
    if tried == "bfloat16" and precision == "auto":
        exact = predict_proba(model, probes, batch_size=probe_batch_size)
        with _precision.autocast("bfloat16", model):
            low = predict_proba(model, probes, batch_size=probe_batch_size)
        if float(abs(low - exact).max()) > _precision.TOLERANCE:
            used = "float32"

    def probe_pass():
        with _precision.autocast(used, model):
            predict_proba(model, probes, batch_size=probe_batch_size)

    probe_time = _fastest(probe_pass, model, repeats) / len(probe_rows)
    allowed = margin * budget / (1.0 - budget) * train_examples * epochs * train_time
    per_set = int(allowed / (snapshots * num_sets * probe_time))
    while per_set < minimum and optional_sets > 0:
        num_sets, optional_sets = num_sets - 1, optional_sets - 1
        per_set = int(allowed / (snapshots * num_sets * probe_time))
    size, limited, requested = min(max(per_set, minimum), maximum), "budget", snapshots
    if per_set < minimum:
        limited = "minimum"
        affordable = int(allowed / (minimum * num_sets * probe_time))
        if min_snapshots is not None and affordable < snapshots:
            thinned = max(affordable, check_positive_int(min_snapshots, "min_snapshots"))
            if thinned < snapshots:  # never more snapshots than the schedule asked for
                snapshots, limited = thinned, "snapshots"
    elif per_set > maximum:
        limited = "maximum"
    recording = size * num_sets * snapshots * probe_time
    share = recording / (recording + train_examples * epochs * train_time)
    return ProbePlan(size=size, num_sets=num_sets, budget=float(budget), expected_share=round(share, 4),
                     train_seconds_per_example=train_time, probe_seconds_per_example=probe_time,
                     snapshots=snapshots, limited=limited, requested_snapshots=requested,
                     probe_precision=used)


def _train_pass(model: nn.Module, batch: Mapping[str, torch.Tensor], labels: torch.Tensor) -> None:
    """A forward and backward pass that leaves no trace (gradients restored to None)."""
    device = model_device(model)
    kept = {name: p.grad for name, p in model.named_parameters()}
    was_training = model.training
    model.train()
    try:
        with compute_autocast(model):  # timed in the precision training computes in
            loss = model(**{k: v.to(device) for k, v in batch.items()}, labels=labels.to(device)).loss
        loss.backward()
    finally:
        model.train(was_training)
        for name, p in model.named_parameters():
            p.grad = kept[name]


def _fastest(work, model: nn.Module, repeats: int) -> float:
    device = model_device(model)
    devices = [device] if device.type == "cuda" else []
    times = []
    with torch.random.fork_rng(devices=devices):
        for _ in range(repeats + 1):  # one warm-up call
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
            work()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - began)
    return min(times[1:])
