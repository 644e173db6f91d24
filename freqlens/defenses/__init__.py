"""Defenses against backdoor learning: MuScleLoRA, its ablations and its peers.

- :mod:`~freqlens.defenses.mslr`: the multi-scale low-rank layer (MSLR).
- :mod:`~freqlens.defenses.placement`: where MSLR goes in BERT, RoBERTa and decoder models.
- :mod:`~freqlens.defenses.adapters`: LoRA and prefix tuning through peft; save, load, merge.
- :mod:`~freqlens.defenses.ga`: gradient alignment, for freqlens' loop and the HF ``Trainer``.
- :mod:`~freqlens.defenses.abl`: Anti-Backdoor Learning.
- :mod:`~freqlens.defenses.registry`: the defenses by name (``defense.name``).
- :mod:`~freqlens.defenses.fit`: training with a named defense.
"""

from freqlens.defenses.abl import train_abl
from freqlens.defenses.adapters import (
    LoraSettings,
    add_lora,
    add_prefix,
    load_defended,
    merge_defended,
    save_defended,
)
from freqlens.defenses.fit import fit_defense
from freqlens.defenses.ga import AlignedTrainerMixin, GAConfig, GradientAligner, align_gradients
from freqlens.defenses.mslr import MSLR_PREFIX, MSLRConfig, MSLRLinear
from freqlens.defenses.placement import MSLRHead, apply_mslr, default_mslr_config, merge_mslr
from freqlens.defenses.registry import DEFENSES, MUSCLE_CHANGES, DefenseConfig, prepare_model

__all__ = [
    "DEFENSES", "MSLR_PREFIX", "MUSCLE_CHANGES", "AlignedTrainerMixin", "DefenseConfig", "GAConfig",
    "GradientAligner", "LoraSettings", "MSLRConfig", "MSLRHead", "MSLRLinear", "add_lora", "add_prefix",
    "align_gradients", "apply_mslr", "default_mslr_config", "fit_defense", "load_defended", "merge_defended",
    "merge_mslr", "prepare_model", "save_defended", "train_abl",
]
