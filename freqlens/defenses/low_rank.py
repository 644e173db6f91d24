"""Adapter defenses through peft: ``lora``, ``mslr`` (LoRA + the multi-scale low-rank layer), ``prefix``.

Their settings are the config's ``[defense.lora]``
(:class:`~freqlens.defenses.adapters.LoraSettings`), ``[defense.mslr]``
(:class:`~freqlens.defenses.mslr.MSLRSettings`) and ``[defense.prefix]``
(:class:`~freqlens.defenses.adapters.PrefixSettings`) tables. Without
``defense.lr``, LoRA defenses train small models (< 100M parameters) at
:data:`~freqlens.defenses.registry.ADAPTER_LR` and prefix tuning at
:data:`~freqlens.defenses.registry.PROMPT_LR` (see
:data:`~freqlens.defenses.registry.MUSCLE_CHANGES`).
"""

from __future__ import annotations

from torch import nn

from freqlens.defenses.adapters import add_lora, add_prefix
from freqlens.defenses.base import Defense, Placed, register_defense
from freqlens.defenses.placement import apply_mslr, default_mslr_config
from freqlens.defenses.registry import ADAPTER_LR, PROMPT_LR, SMALL_MODEL, count_parameters


class LoRA(Defense):
    """peft LoRA on the encoder (``defense.lora``), everything else frozen, the head included."""

    adapter = "lora"

    def place(self, model: nn.Module) -> Placed:
        return Placed(add_lora(model, self.config.lora))

    def default_lr(self, model: nn.Module, train_lr: float) -> float:
        """:data:`~freqlens.defenses.registry.ADAPTER_LR` on models under 100M parameters, else ``train.lr``."""
        return ADAPTER_LR if count_parameters(model) < SMALL_MODEL else float(train_lr)


class MSLR(LoRA):
    """LoRA plus the multi-scale low-rank layer (``defense.mslr``) where the family places it."""

    mslr_init = "zero"  # `defense.mslr.init` when unset (MUSCLE_CHANGES)

    def place(self, model: nn.Module) -> Placed:
        settings = self.config.mslr
        mslr = default_mslr_config(model, **settings.overrides(self.mslr_init))
        layers = apply_mslr(model, mslr, target=list(settings.target) or None)
        return Placed(add_lora(model, self.config.lora), mslr=mslr.to_dict(), mslr_layers=layers,
                      mslr_targets=settings.target)


class Prefix(Defense):
    """peft prefix tuning (prompt tuning where the model takes no ``past_key_values``), ``defense.prefix``."""

    adapter = "prefix"

    def virtual_tokens(self) -> int:
        return self.config.prefix.tokens

    def place(self, model: nn.Module) -> Placed:
        return Placed(add_prefix(model, self.config.prefix.tokens))

    def default_lr(self, model: nn.Module, train_lr: float) -> float:
        return PROMPT_LR


register_defense("lora", LoRA)
register_defense("mslr", MSLR)
register_defense("prefix", Prefix)
