"""LoRA and prefix tuning through peft, combined with MSLR; save, load and merge.

LoRA goes on the encoder with peft's own ``LoraConfig`` and
``get_peft_model``; the original classification head stays frozen (METHOD.md).
MSLR layers (and a decoder's added head) are placed before peft wraps the
model and made trainable again afterwards, since peft freezes everything it
does not own. A defended model is saved as the peft adapter
(``adapter_config.json``, ``adapter_model.safetensors``), the MSLR and other
freqlens-trained weights (``freqlens_weights.safetensors``) and the freqlens
settings (``freqlens_defense.json``); :func:`load_defended` rebuilds it on the
base model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from freqlens._checks import check_positive_int
from freqlens.defenses.mslr import MSLR_PREFIX, MSLRConfig
from freqlens.defenses.placement import MSLRHead, apply_mslr, merge_mslr

SETTINGS_FILE = "freqlens_defense.json"
WEIGHTS_FILE = "freqlens_weights.safetensors"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA settings (the paper's for BERT and RoBERTa: r 8, alpha 32, dropout 0).

    ``targets`` empty: peft's default modules for the model type (BERT and
    RoBERTa: query and value; GPT-2: c_attn; Llama: q_proj and v_proj).
    """

    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_positive_int(self.r, "lora_r")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"Expected `lora_alpha` > 0 but got {self.alpha!r}.")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"Expected `lora_dropout` in [0, 1) but got {self.dropout!r}.")
        object.__setattr__(self, "targets", tuple(self.targets))


def add_lora(model: nn.Module, settings: LoraSettings | None = None) -> nn.Module:
    """Wrap ``model`` with peft LoRA; everything else frozen except MSLR and an added head.

    Returns the ``peft.PeftModel``.
    """
    from peft import LoraConfig, get_peft_model

    settings = settings or LoraSettings()
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.targets) or None)
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as error:
        raise ValueError(
            f"peft could not place LoRA in {type(model).__name__} ({error}); name the modules with "
            f"`defense.lora_targets`."
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

    check_positive_int(num_virtual_tokens, "prefix_tokens")
    if "past_key_values" in inspect.signature(model.forward).parameters:
        config, kind = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=num_virtual_tokens), "prefix"
    else:
        config, kind = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=num_virtual_tokens), "prompt"
    wrapped = get_peft_model(model, config)
    wrapped.freqlens_adapter = kind
    return wrapped


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


def freqlens_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights freqlens adds (MSLR and an added head), keyed by name inside the base model."""
    base = _base_model(model)
    state = {}
    for name, module in base.named_modules():
        if isinstance(module, MSLRHead):
            for key, value in module.state_dict().items():
                state[f"{name}.{key}"] = value
    for name, value in base.state_dict().items():
        if name.rpartition(".")[2].startswith(MSLR_PREFIX):
            state[name] = value
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


@dataclass(frozen=True)
class DefendedLayout:
    """How a defended model is built from its base model (saved as JSON)."""

    mslr: dict | None = None  # MSLRConfig fields, or None
    mslr_targets: tuple[str, ...] = ()  # names given to apply_mslr (empty: the default placement)
    adapter: str = "none"  # "none", "lora" or "prefix"

    def to_dict(self) -> dict:
        return asdict(self)


def save_defended(model: nn.Module, directory: str | Path, layout: DefendedLayout) -> Path:
    """Save a defended model: peft adapter, freqlens weights and the layout."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if layout.adapter != "none" or not layout.mslr:
        model.save_pretrained(directory)  # the adapter, or the whole fine-tuned model
    state = freqlens_state_dict(model)
    if state:
        save_file(state, str(directory / WEIGHTS_FILE))
    (directory / SETTINGS_FILE).write_text(json.dumps(layout.to_dict(), indent=2), encoding="utf-8")
    return directory


def load_defended(base_model: nn.Module, directory: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_defended` on a fresh ``base_model``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    settings = directory / SETTINGS_FILE
    if not settings.is_file():
        raise FileNotFoundError(f"Expected a saved defended model in {directory} but {settings.name} is missing.")
    layout = json.loads(settings.read_text(encoding="utf-8"))
    model = base_model
    if layout.get("mslr"):
        config = MSLRConfig(**{**layout["mslr"], "bands": tuple(layout["mslr"]["bands"])})
        apply_mslr(model, config, target=list(layout.get("mslr_targets") or []) or None)
    weights = directory / WEIGHTS_FILE
    if weights.is_file():
        state = load_file(str(weights))
        known = model.state_dict()
        missing = [k for k in state if k not in known]
        if missing:
            raise ValueError(f"Saved freqlens weights {missing[:3]} do not fit {type(model).__name__}.")
        model.load_state_dict(state, strict=False)
    if layout.get("adapter", "none") != "none":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(directory))
    elif not layout.get("mslr"):
        model = type(base_model).from_pretrained(str(directory))
    return model


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
