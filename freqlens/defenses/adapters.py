"""LoRA and prefix tuning through peft, combined with MSLR; save, load and merge.

LoRA goes on the encoder with peft's own ``LoraConfig`` and
``get_peft_model``; the original classification head stays frozen (METHOD.md).
MSLR layers (and a decoder's added head) are placed before peft wraps the
model and made trainable again afterwards, since peft freezes everything it
does not own. A defended model is saved as the peft adapter
(``adapter_config.json``, ``adapter_model.safetensors``), every other weight
that a fresh ``from_pretrained`` of the base would not give back
(``freqlens_weights.safetensors``, see :func:`weights_to_save`) and the
freqlens settings (``freqlens_defense.json``, with the list of those
weights); :func:`load_defended` rebuilds it on the base model and refuses a
save that lacks any of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from freqlens._checks import check_positive_int
from freqlens.defenses.mslr import MSLR_PREFIX, MSLRConfig, MSLRLinear
from freqlens.defenses.placement import MSLRHead, apply_mslr, merge_mslr

SETTINGS_FILE = "freqlens_defense.json"
WEIGHTS_FILE = "freqlens_weights.safetensors"


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA settings, the config's ``[defense.lora]`` table (errors name ``defense.lora.<key>``).

    The paper's for BERT and RoBERTa: r 8, alpha 32, dropout 0.
    """

    KEY: ClassVar[str] = "defense.lora."

    r: int = 8  # LoRA rank (the paper: 8 for BERT/RoBERTa, 2 for LLMs)
    alpha: float = 32.0  # LoRA alpha (the paper: 32 / 8)
    dropout: float = 0.0  # dropout on LoRA's input, in [0, 1)
    targets: tuple[str, ...] = ()  # module names; () : peft's default for the model type (BERT: query, value)

    def __post_init__(self) -> None:
        key = self.KEY
        check_positive_int(self.r, f"{key}r")
        if not (isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool) and self.alpha > 0):
            raise ValueError(f"Expected `{key}alpha` > 0 but got {self.alpha!r}.")
        if not (isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
                and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"Expected `{key}dropout` in [0, 1) but got {self.dropout!r}.")
        targets = (self.targets,) if isinstance(self.targets, str) and self.targets else self.targets or ()
        if isinstance(targets, str) or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"Expected `{key}targets` to be module names but got {self.targets!r}.")
        object.__setattr__(self, "targets", tuple(targets))


@dataclass(frozen=True)
class PrefixSettings:
    """peft prefix (or prompt) tuning, the config's ``[defense.prefix]`` table."""

    KEY: ClassVar[str] = "defense.prefix."

    tokens: int = 10  # virtual tokens put before every input

    def __post_init__(self) -> None:
        check_positive_int(self.tokens, f"{self.KEY}tokens")


def add_lora(model: nn.Module, settings: LoraSettings | None = None) -> nn.Module:
    """Wrap ``model`` with peft LoRA; everything else frozen except MSLR and an added head.

    Returns the ``peft.PeftModel``.
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    settings = settings or LoraSettings()
    conv1d = any(isinstance(m, Conv1D) for m in model.modules())  # GPT-2 stores weights (in, out)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.targets) or None, fan_in_fan_out=conv1d)
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as error:
        raise ValueError(
            f"peft could not place LoRA in {type(model).__name__} ({error}); name the modules with "
            f"`{settings.KEY}targets`."
        ) from error
    unfreeze_freqlens_parameters(wrapped)
    return wrapped


def add_prefix(model: nn.Module, num_virtual_tokens: int = 10) -> nn.Module:
    """Wrap ``model`` with peft prefix tuning (sequence classification: the head trains too).

    Prefix tuning feeds trained key/value prefixes to every attention layer
    through ``past_key_values``. Models whose forward no longer takes
    ``past_key_values`` (in transformers >= 5: BERT, RoBERTa, GPT-2 and Llama
    alike) get peft prompt tuning instead, trained virtual tokens at the input,
    the nearest method peft offers for them; ``model.freqlens_adapter`` says
    which one ran (``"prefix"`` or ``"prompt"``), and so do the saved layout
    and ``results.json``.
    """
    import inspect

    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    check_positive_int(num_virtual_tokens, f"{PrefixSettings.KEY}tokens")
    if "past_key_values" in inspect.signature(model.forward).parameters:
        config, kind = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=num_virtual_tokens), "prefix"
    else:
        config, kind = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=num_virtual_tokens), "prompt"
    wrapped = get_peft_model(model, config)
    wrapped.freqlens_adapter = kind
    return wrapped


def position_limit(model: nn.Module) -> tuple[int, str] | None:
    """How many tokens one input may have in ``model``, and where that limit comes from.

    The limit is the config's ``max_position_embeddings`` (``n_positions`` for
    GPT-2; for rotary models such as Llama the length they were configured
    for), less the padding offset of RoBERTa-like embeddings, whose positions
    start at ``padding_idx + 1``. Returns None for a model whose config names
    no such length.
    """
    base = _base_model(model)
    config = getattr(base, "config", None)
    for key in ("n_positions", "max_position_embeddings"):  # GPT-2's own name first (the other is its alias)
        table = getattr(config, key, None)
        if isinstance(table, int) and not isinstance(table, bool) and table > 0:
            break
    else:
        return None
    where = f"the positions of {type(base).__name__}: `{key}` = {table} in its config"
    for module in base.modules():  # RoBERTa-like embeddings number positions from padding_idx + 1
        pad = getattr(module, "padding_idx", None)
        if hasattr(module, "create_position_ids_from_input_ids") and isinstance(pad, int) and pad >= 0:
            return table - pad - 1, f"{where}, less {pad + 1} for positions that start after the padding id"
    return table, where


def virtual_tokens(model: nn.Module) -> int:
    """Tokens a peft prompt-learning adapter (prefix or prompt tuning) puts before each input; 0 without one."""
    configs = getattr(model, "peft_config", None) or {}
    return max((int(getattr(c, "num_virtual_tokens", 0) or 0) for c in configs.values()
                if getattr(c, "is_prompt_learning", False)), default=0)


def check_input_length(model: nn.Module, length: int, *, tokens: int | None = None,
                       length_key: str = "model.max_length", tokens_key: str = "defense.prefix.tokens") -> None:
    """Refuse inputs of ``length`` tokens that, with the virtual tokens, pass ``model``'s position table.

    Prefix and prompt tuning put ``tokens`` virtual tokens (default: the
    model's own adapter, :func:`virtual_tokens`) before every input, so
    ``length`` + ``tokens`` must fit :func:`position_limit`; otherwise training
    would stop with a bare size-mismatch error at the first long batch (or, for
    rotary models, run past the configured length).

    Raises:
        ValueError: naming ``length_key`` and, with virtual tokens,
            ``tokens_key``, with the numbers and the limit.
    """
    limit = position_limit(model)
    if limit is None:
        return
    table, where = limit
    tokens = virtual_tokens(model) if tokens is None else tokens
    if length + tokens <= table:
        return
    if tokens:
        raise ValueError(
            f"Expected `{length_key}` + `{tokens_key}` <= {table} ({where}) but got {length} + {tokens} = "
            f"{length + tokens}: prefix/prompt tuning puts its {tokens} virtual tokens before every input. Lower "
            f"`{length_key}` to {max(table - tokens, 0)} or `{tokens_key}`.")
    raise ValueError(f"Expected `{length_key}` <= {table} ({where}) but got {length}.")


def unfreeze_freqlens_parameters(model: nn.Module) -> list[str]:
    """Make MSLR parameters and a decoder's added second head layer trainable; returns their names."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, MSLRHead):
            for pname, p in module[1].named_parameters():
                p.requires_grad_(True)
                names.append(f"{name}.1.{pname}")
    for name, p in model.named_parameters():
        if name.rpartition(".")[2].startswith(MSLR_PREFIX):
            p.requires_grad_(True)
            names.append(name)
    return names


CHECKPOINT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")  # transformers' order of preference


def plain_state(model: nn.Module) -> dict[str, tuple[torch.Tensor, str]]:
    """Every persistent tensor of ``model`` as the model without peft would name it.

    peft's wrappers are taken off (a LoRA layer stands for its base layer, a
    ``modules_to_save`` wrapper for its original module; the adapter's own
    weights are peft's to save), MSLR is kept. Returns, per state-dict key of
    the plain model, the tensor and the key the base checkpoint would hold it
    under (an MSLR layer's frozen ``base`` is the layer it replaced).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    state: dict[str, tuple[torch.Tensor, str]] = {}

    def walk(module: nn.Module, prefix: str, source: str) -> None:
        while True:  # take peft's wrappers off
            if isinstance(module, AuxiliaryTrainingWrapper):
                module = module.original_module
            elif isinstance(module, BaseTunerLayer):
                module = module.get_base_layer()
            else:
                break
        tensors = [(n, p) for n, p in module._parameters.items() if p is not None]
        tensors += [(n, b) for n, b in module._buffers.items()
                    if b is not None and n not in module._non_persistent_buffers_set]
        for name, tensor in tensors:
            state[prefix + name] = (tensor, source + name)
        for name, child in module._modules.items():
            if child is not None:
                inner = source if isinstance(module, MSLRLinear) and name == "base" else f"{source}{name}."
                walk(child, f"{prefix}{name}.", inner)

    walk(_base_model(model), "", "")
    return state


def checkpoint_shapes(model: nn.Module) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes in the checkpoint ``model`` was loaded from (``config._name_or_path``), by key.

    Reads only the files' headers (safetensors) or memory-maps them (``.bin``).
    Returns None when the model names no checkpoint (built from a config) or
    its files cannot be found: a local folder, or a hub id in the local
    Hugging Face cache (no network), holding ``model.safetensors``,
    ``pytorch_model.bin`` or their sharded index.
    """
    source = _checkpoint_name(model)
    if not source:
        return None
    for filename in CHECKPOINT_FILES:
        path = _checkpoint_file(source, filename)
        if path is None:
            continue
        if filename.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
            if not all((path.parent / shard).is_file() for shard in shards):
                return None
            files = [path.parent / shard for shard in shards]
        else:
            files = [path]
        shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            shapes.update(_tensor_shapes(file))
        return shapes
    return None


def _checkpoint_file(source: str, filename: str) -> Path | None:
    folder = Path(source).expanduser()
    if folder.is_dir():
        path = folder / filename
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, filename)
    except Exception:  # not a valid hub id either
        return None
    return Path(cached) if isinstance(cached, str) and Path(cached).is_file() else None


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def _from_checkpoint(source: str, shape: tuple[int, ...], checkpoint: dict[str, tuple[int, ...]],
                     prefix: str) -> bool:
    """Whether ``from_pretrained`` fills the tensor saved as ``source`` from the checkpoint.

    A checkpoint of the bare backbone keys its tensors without the head
    model's ``base_model_prefix`` (``bert.``, ``roberta.``, ``transformer.``,
    ``model.``), and transformers adds it on loading; a tensor whose shape
    differs (``ignore_mismatched_sizes``) is initialised anew.
    """
    names = [source]
    if prefix:
        names.append(source[len(prefix) + 1:] if source.startswith(prefix + ".") else f"{prefix}.{source}")
    return any(checkpoint.get(name) == tuple(shape) for name in names)


def _checkpoint_name(model: nn.Module) -> str:
    """The checkpoint the base model was loaded from (``config._name_or_path``; "" when built from a config)."""
    return str(getattr(getattr(_base_model(model), "config", None), "_name_or_path", "") or "")


def weights_not_in_checkpoint(model: nn.Module, plain: dict | None = None) -> set[str] | None:
    """State-dict keys of ``model`` without peft (:func:`plain_state`) that its checkpoint does not fill.

    These are the weights ``from_pretrained`` initialised at random (a head
    or pooler the checkpoint lacks, or one of another shape) and the ones
    added since (MSLR, a decoder's :class:`MSLRHead`). Every key when the
    model names no checkpoint (built from a config); None when it names one
    whose files cannot be found (:func:`checkpoint_shapes`). ``plain``: the
    model's :func:`plain_state`, when the caller has it.
    """
    base = _base_model(model)
    plain = plain_state(model) if plain is None else plain
    if not _checkpoint_name(model):
        return set(plain)
    checkpoint = checkpoint_shapes(base)
    if checkpoint is None:
        return None
    prefix = getattr(base, "base_model_prefix", "") or ""
    return {name for name, (tensor, source) in plain.items()
            if not _from_checkpoint(source, tuple(tensor.shape), checkpoint, prefix)}


def weights_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of an adapter or MSLR model that the base checkpoint does not give back, by plain name.

    That is every tensor of the model without peft's wrappers (see
    :func:`plain_state`) which is
    - not filled from the base checkpoint (:func:`weights_not_in_checkpoint`):
      a head, pooler or any weight ``from_pretrained`` initialised at random,
      frozen or not, and what freqlens added (MSLR, a decoder's
      :class:`MSLRHead`); every tensor when the model names no checkpoint or
      its files cannot be found (with a warning in the latter case); or
    - trainable (``requires_grad``) outside peft's adapter, e.g. a model with
      MSLR and no adapter whose other layers were trained too.
    The adapter's own weights and trained ``modules_to_save`` copies are in
    peft's file.
    """
    plain = plain_state(model)
    random = weights_not_in_checkpoint(model, plain)
    if random is None:
        import warnings

        warnings.warn(f"The files of {_checkpoint_name(model)!r}, which the model was loaded "
                      f"from, were not found; the saved model holds every weight.", stacklevel=3)
    return {name: tensor.detach().cpu().clone().contiguous()
            for name, (tensor, _) in plain.items()
            if random is None or name in random or tensor.requires_grad}


@dataclass(frozen=True)
class DefendedLayout:
    """How a defended model is built from its base model (saved as JSON)."""

    mslr: dict | None = None  # MSLRConfig fields, or None
    mslr_targets: tuple[str, ...] = ()  # names given to apply_mslr (empty: the default placement)
    adapter: str = "none"  # "none", "lora", "prefix" or "prompt"

    def to_dict(self) -> dict:
        return asdict(self)


def save_defended(model: nn.Module, directory: str | Path, layout: DefendedLayout) -> Path:
    """Save a defended model into ``directory`` (created); returns it.

    Full fine-tuning (no adapter, no MSLR) is saved whole by
    ``save_pretrained``. An adapter or MSLR model is saved as peft's adapter
    (``adapter_config.json``, ``adapter_model.safetensors``) plus
    ``freqlens_weights.safetensors`` holding every weight a fresh
    ``from_pretrained`` of the base would not give back (:func:`weights_to_save`:
    a randomly initialised head or pooler, MSLR, an added head), so that
    :func:`load_defended` rebuilds the same model whatever the torch seed;
    ``freqlens_defense.json`` holds ``layout``, the base checkpoint's name and
    the list of saved weights.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    full = layout.adapter == "none" and not layout.mslr
    if full or layout.adapter != "none":
        model.save_pretrained(directory)  # the adapter, or the whole fine-tuned model
    state = {} if full else weights_to_save(model)
    if state:
        save_file(state, str(directory / WEIGHTS_FILE))
    settings = {**layout.to_dict(), "base": _checkpoint_name(model), "weights": sorted(state)}
    (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return directory


def load_defended(base_model: nn.Module, directory: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_defended` on ``base_model``.

    Args:
        base_model: the base as ``from_pretrained`` gives it (the same
            checkpoint the defended model was prepared on); changed in place.
        directory: the folder :func:`save_defended` wrote.

    Returns:
        The defended model (a ``peft.PeftModel`` when an adapter was saved).

    Raises:
        FileNotFoundError: ``directory`` holds no ``freqlens_defense.json``.
        ValueError: ``freqlens_weights.safetensors`` lacks a weight the save
            listed, or a weight of ``base_model`` that its checkpoint does not
            provide (``from_pretrained`` drew it at random), or holds a weight
            that ``base_model`` does not have or has in another shape; a
            whole saved model lacks a weight of ``base_model``'s class; each
            named.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    settings = directory / SETTINGS_FILE
    if not settings.is_file():
        raise FileNotFoundError(f"Expected a saved defended model in {directory} but {settings.name} is missing.")
    layout = json.loads(settings.read_text(encoding="utf-8"))
    adapter = layout.get("adapter", "none")
    if adapter == "none" and not layout.get("mslr"):  # saved whole by save_pretrained
        model, info = type(base_model).from_pretrained(str(directory), output_loading_info=True)
        lost = sorted(set(info["missing_keys"]) | {key for key, *_ in info.get("mismatched_keys", ())})
        if lost:
            raise ValueError(f"Expected the model saved in {directory} to hold every weight of "
                             f"{type(base_model).__name__} but {len(lost)} are missing or of another shape: "
                             f"{', '.join(lost[:8])}.")
        return model
    model = base_model
    if layout.get("mslr"):
        config = MSLRConfig(**{**layout["mslr"], "bands": tuple(layout["mslr"]["bands"])})
        apply_mslr(model, config, target=list(layout.get("mslr_targets") or []) or None)
    weights = directory / WEIGHTS_FILE
    state = load_file(str(weights)) if weights.is_file() else {}
    _check_saved_weights(model, state, layout, weights)
    model.load_state_dict(state, strict=False)
    if adapter != "none":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(directory))
    return model


def _check_saved_weights(model: nn.Module, state: dict[str, torch.Tensor], layout: dict, weights: Path) -> None:
    """Refuse a save that would leave a weight of the rebuilt model to the torch seed (see load_defended)."""
    def listing(names: list[str]) -> str:
        return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")

    listed = layout.get("weights")
    if listed is not None:
        lost = sorted(set(listed) - set(state))
        if lost:
            raise ValueError(f"Expected {weights.name} in {weights.parent} to hold the {len(listed)} weights the "
                             f"save listed but {len(lost)} are missing: {listing(lost)}.")
    plain = plain_state(model)
    unfit = [f"{k} (saved {tuple(v.shape)}, model {tuple(plain[k][0].shape) if k in plain else 'has none'})"
             for k, v in state.items() if k not in plain or tuple(plain[k][0].shape) != tuple(v.shape)]
    if unfit:
        raise ValueError(f"Expected the weights in {weights} to fit {type(model).__name__} but "
                         f"{len(unfit)} do not (name, shape): {listing(sorted(unfit))}; was it saved from another "
                         f"base model?")
    random = weights_not_in_checkpoint(model, plain)
    if random is None:
        return  # the base's files were not found: the saved list above is what can be checked
    lost = sorted(random - set(state))
    if lost:
        source = _checkpoint_name(model)
        origin = (f"the base checkpoint {source!r} does not hold them" if source
                  else "the base model was built from a config, so none of its weights come from a checkpoint")
        raise ValueError(f"Expected {weights.name} in {weights.parent} to hold every weight of the rebuilt "
                         f"model that from_pretrained initialises at random ({origin}) but {len(lost)} are "
                         f"missing: {listing(lost)}; loading would leave them to the torch seed.")


def merge_defended(model: nn.Module) -> nn.Module:
    """A plain model for deployment: LoRA merged by peft, MSLR folded into its base layer."""
    if hasattr(model, "merge_and_unload") and _is_lora(model):
        model = model.merge_and_unload()
    elif hasattr(model, "get_base_model") and not _is_lora(model):
        raise ValueError("Expected a LoRA or MSLR model to merge; prefix tuning cannot be merged into weights.")
    return merge_mslr(model)


def _is_lora(model: nn.Module) -> bool:
    config = getattr(model, "peft_config", None)
    return bool(config) and all(getattr(c, "peft_type", None) is not None and c.peft_type.value == "LORA"
                                for c in config.values())


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trainable_names(model: nn.Module) -> Sequence[str]:
    """Names of the trainable parameters."""
    return [n for n, p in model.named_parameters() if p.requires_grad]
