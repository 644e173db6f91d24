"""Defenses against backdoor learning: MuScleLoRA, its ablations and its peers.

- :mod:`~freqlens.defenses.mslr`: the multi-scale low-rank layer (MSLR).
- :mod:`~freqlens.defenses.placement`: where MSLR goes in BERT, RoBERTa and decoder models.
- :mod:`~freqlens.defenses.adapters`: LoRA and prefix tuning through peft; save, load, merge.
- :mod:`~freqlens.defenses.ga`: gradient alignment, for freqlens' loop and the HF ``Trainer``.
- :mod:`~freqlens.defenses.abl`: Anti-Backdoor Learning.
- :mod:`~freqlens.defenses.base`: a defense as an object (:class:`Defense`) and the
  registry (:func:`register_defense`, :func:`make_defense`, :data:`DEFENSES`).
- :mod:`~freqlens.defenses.plain`, :mod:`~freqlens.defenses.low_rank`,
  :mod:`~freqlens.defenses.aligned`, :mod:`~freqlens.defenses.abl`: the
  built-in defenses, each family registered in its own module.
- :mod:`~freqlens.defenses.registry`: the ``[defense]`` config section (:class:`DefenseConfig`).
- :mod:`~freqlens.defenses.fit`: training with a named defense.
"""

from freqlens.defenses import plain as _plain  # noqa: F401, I001 (the built-ins register in this order)
from freqlens.defenses import low_rank as _low_rank  # noqa: F401
from freqlens.defenses import aligned as _aligned  # noqa: F401
from freqlens.defenses import abl as _abl  # noqa: F401
from freqlens.defenses import early_loss as _early_loss  # noqa: F401
from freqlens.defenses import dece as _dece  # noqa: F401
from freqlens.defenses import graceful as _graceful  # noqa: F401
from freqlens.defenses import cube as _cube  # noqa: F401
from freqlens.defenses import bki as _bki  # noqa: F401
from freqlens.defenses.base import (
    DEFENSES,
    Defense,
    Placed,
    Prepared,
    make_defense,
    register_defense,
    unregister_defense,
)
from freqlens.defenses.abl import ABLSettings, train_abl
from freqlens.defenses.adapters import (
    LoraSettings,
    PrefixSettings,
    add_lora,
    add_prefix,
    load_defended,
    merge_defended,
    save_defended,
)
from freqlens.defenses.fit import fit_defense
from freqlens.defenses.ga import AlignedTrainerMixin, GAConfig, GASettings, GradientAligner, align_gradients
from freqlens.defenses.mslr import MSLR_PREFIX, MSLRConfig, MSLRLinear, MSLRSettings
from freqlens.defenses.placement import MSLRHead, apply_mslr, default_mslr_config, merge_mslr
from freqlens.defenses.registry import MUSCLE_CHANGES, DefenseConfig, prepare_model

__all__ = [
    "DEFENSES", "MSLR_PREFIX", "MUSCLE_CHANGES", "ABLSettings", "AlignedTrainerMixin", "Defense", "DefenseConfig",
    "GAConfig", "GASettings", "GradientAligner", "LoraSettings", "MSLRConfig", "MSLRHead", "MSLRLinear",
    "MSLRSettings", "Placed", "PrefixSettings", "Prepared", "add_lora", "add_prefix", "align_gradients",
    "apply_mslr", "default_mslr_config", "fit_defense", "load_defended", "make_defense", "merge_defended",
    "merge_mslr", "prepare_model", "register_defense", "save_defended", "train_abl", "unregister_defense",
]
