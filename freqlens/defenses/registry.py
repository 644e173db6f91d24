"""The ``[defense]`` config section (:class:`DefenseConfig`) and the built-in defense set.

Each name is a :class:`~freqlens.defenses.base.Defense` registered in its
family's module (:mod:`~freqlens.defenses.plain`,
:mod:`~freqlens.defenses.low_rank`, :mod:`~freqlens.defenses.aligned`,
:mod:`~freqlens.defenses.abl`); :func:`~freqlens.defenses.base.register_defense`
adds more.

========================  ==================================================================
``vanilla``               full fine-tuning (no defense)
``lora``                  peft LoRA on the encoder, head frozen
``mslr``                  LoRA + the multi-scale low-rank layer, no gradient alignment
``ga``                    full fine-tuning with gradient alignment
``ga+lora``               LoRA with gradient alignment
``muscle``                LoRA + MSLR + GA, freqlens' form (see :data:`MUSCLE_CHANGES`)
``muscle-paper``          LoRA + MSLR + GA as published (METHOD.md section 3)
``prefix``                peft prefix tuning
``abl``                   Anti-Backdoor Learning (Li et al., NeurIPS 2021)
``reference-only``        full fine-tuning on the clean reference set alone, for as many steps
``dece``                  full fine-tuning with the deceptive cross-entropy (Yang et al., arXiv 2407.08956)
``graceful``              drop the smallest cluster of head gradients in DCT space (Wu et al., arXiv 2412.02454)
``cube``                  keep each label's largest cluster of representations, retrain (Cui et al., arXiv 2206.08514)
``bki``                   drop the sentences holding the top backdoor keyword, retrain (Chen and Dai, arXiv 2007.12070)
========================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

from torch import nn

from freqlens._checks import check_choice, check_positive_int
from freqlens.defenses.abl import ABLSettings
from freqlens.defenses.adapters import LoraSettings, PrefixSettings
from freqlens.defenses.base import DEFENSES, Prepared, defense_class, make_defense
from freqlens.defenses.ga import GAConfig, GASettings
from freqlens.defenses.mslr import MSLRSettings

SELECTIONS = ("auto", "best-dev", "last")

# How freqlens' `muscle` differs from `muscle-paper`, and the measurement behind each change.
MUSCLE_CHANGES = {
    "mslr.init": ("zero (R = 0)", "the paper's Kaiming-uniform L and R made all-MiniLM-L6-v2 predict the "
                  "target class for 84-87% of inputs before training (METHOD.md pitfalls)"),
    "reference_size": ("256", "with 96 reference examples GA behaves like fine-tuning on those 96 and "
                       "cost 5-13 clean-accuracy points (METHOD.md pitfalls)"),
    "lr": ("5e-4 for models under 100M parameters", "LoRA at the paper's 2e-5 did not learn SST-2 on "
           "all-MiniLM-L6-v2 (CACC 0.56); at 5e-4 it did (METHOD.md pitfalls)"),
}

SMALL_MODEL = 100_000_000  # parameters: below this, adapter defenses default to ADAPTER_LR
ADAPTER_LR = 5e-4  # LoRA on all-MiniLM-L6-v2 (METHOD.md pitfalls)
PROMPT_LR = 1e-2  # prefix / prompt tuning: the usual order for soft prompts (not tuned here)

#: The flat keys of earlier versions' ``[defense]`` section and where each lives now (``defense.<new>``).
FLAT_KEYS = {
    **{f"lora_{k}": f"lora.{k}" for k in ("r", "alpha", "dropout", "targets")},
    **{f"mslr_{k}": f"mslr.{k}" for k in ("bands", "rank", "alpha", "dropout", "init", "target")},
    **{f"ga_{k}": f"ga.{k}" for k in ("loss_threshold", "norm_threshold", "mu", "pure", "subspace")},
    **{f"abl_{k}": f"abl.{k}" for k in ("isolation_rate", "isolation_epochs", "gamma", "unlearn_epochs",
                                         "unlearn_lr")},
    "prefix_tokens": "prefix.tokens",
}

#: The nested tables of ``[defense]``: key -> the settings class.
SECTIONS = {"lora": LoraSettings, "mslr": MSLRSettings, "ga": GASettings, "abl": ABLSettings,
            "prefix": PrefixSettings}


@dataclass(frozen=True)
class DefenseConfig:
    """Which defense to train with (``name``, one registered), its shared settings and each component's table.

    Components' settings are nested tables, each its component's own
    dataclass: ``[defense.lora]`` (:class:`~freqlens.defenses.adapters.LoraSettings`),
    ``[defense.mslr]`` (:class:`~freqlens.defenses.mslr.MSLRSettings`),
    ``[defense.ga]`` (:class:`~freqlens.defenses.ga.GASettings`),
    ``[defense.abl]`` (:class:`~freqlens.defenses.abl.ABLSettings`),
    ``[defense.prefix]`` (:class:`~freqlens.defenses.adapters.PrefixSettings`);
    from Python, each may be given as its dataclass or as a mapping
    (``DefenseConfig(name="muscle", ga={"mu": 0.2})``). A registered
    defense with its own settings (``Defense.options``) reads them from
    ``[defense.options]``. The flat keys of earlier versions
    (``defense.ga_mu``) are refused with their new name (:data:`FLAT_KEYS`).

    Raises:
        ValueError: an unknown defense or selection, a bad value (each named
            by its dotted key, e.g. ``defense.ga.mu``), options for a defense
            that takes none, a flat key of earlier versions.
    """

    RENAMED: ClassVar[dict[str, str]] = FLAT_KEYS  # old key -> new key (settings.build names the new one)

    name: str = "vanilla"  # the defense, one of the registered names (freqlens.defenses.DEFENSES)
    lr: float | None = None  # None: 5e-4 for LoRA defenses on models < 100M parameters (not muscle-paper), 1e-2 for prefix, else train.lr
    select: str = "auto"  # "auto" (best dev accuracy for defended runs, last epoch for vanilla), "best-dev", "last"
    reference_size: int | None = None  # clean reference examples split off dev-clean; None: 96 for muscle-paper, else 256
    save_model: bool = False  # write the trained model (adapter + MSLR + settings) to OUT/model
    lora: LoraSettings = field(default_factory=LoraSettings)  # peft LoRA (lora, mslr, ga+lora, muscle, muscle-paper)
    mslr: MSLRSettings = field(default_factory=MSLRSettings)  # MSLR (mslr, muscle, muscle-paper)
    ga: GASettings = field(default_factory=GASettings)  # gradient alignment (ga, ga+lora, muscle, muscle-paper)
    abl: ABLSettings = field(default_factory=ABLSettings)  # Anti-Backdoor Learning (abl)
    prefix: PrefixSettings = field(default_factory=PrefixSettings)  # prefix tuning (prefix)
    options: Any = None  # a registered defense's own settings ([defense.options]; its `options` dataclass)

    def __post_init__(self) -> None:
        from freqlens.settings import build

        cls = defense_class(self.name)  # names `defense.name` and the registered names
        check_choice(self.select, "defense.select", SELECTIONS)
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool)
                                        and self.lr > 0):
            raise ValueError(f"Expected `defense.lr` > 0 or None but got {self.lr!r}.")
        if self.reference_size is not None:
            check_positive_int(self.reference_size, "defense.reference_size")
        if not isinstance(self.save_model, bool):
            raise ValueError(f"Expected `defense.save_model` to be true or false but got {self.save_model!r}.")
        for key, section in SECTIONS.items():
            value = getattr(self, key)
            if isinstance(value, section):
                continue
            if isinstance(value, GAConfig) and section is GASettings:  # the library's GAConfig, re-checked
                value = asdict(value)
            object.__setattr__(self, key, build(section, value, f"defense.{key}"))
        options = self.options
        if not (options is None or isinstance(options, Mapping) or (cls.options and isinstance(options, cls.options))):
            raise ValueError(f"Expected `defense.options` to be a table of the defense's own settings (or absent) "
                             f"but got {options!r}.")
        if cls.options is None:
            if options:
                raise ValueError(f"Expected no `defense.options` for defense {self.name!r} (it takes none) but got "
                                 f"{options!r}.")
            object.__setattr__(self, "options", None)
        elif not isinstance(options, cls.options):
            object.__setattr__(self, "options", build(cls.options, options or {}, "defense.options"))

    def to_dict(self) -> dict:
        return asdict(self)


def nest_flat_keys(section: Mapping) -> dict:
    """A ``[defense]`` table of an earlier freqlens (flat keys such as ``ga_mu``) with its keys nested.

    For reading stored configs (``results.json``, ``checkpoint/config.json``)
    of earlier runs; a config file with flat keys is refused instead
    (:class:`DefenseConfig`). Keys that are not flat are kept as they are.
    """
    nested: dict = {}
    for key, value in section.items():
        if key in FLAT_KEYS:
            table, _, name = FLAT_KEYS[key].partition(".")
            nested.setdefault(table, {})
            if isinstance(nested[table], dict):
                nested[table][name] = value
        elif isinstance(value, dict) and isinstance(nested.get(key), dict):
            nested[key].update(value)
        else:
            nested[key] = value
    return nested


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prepare_model(model: nn.Module, config: DefenseConfig, *, max_length: int | None = None) -> Prepared:
    """Place MSLR and adapters for ``config``'s defense; fails before training on a bad setting.

    The same as ``make_defense(config).prepare(model, max_length=max_length)``
    (:meth:`~freqlens.defenses.base.Defense.prepare`).

    Args:
        model: a Hugging Face sequence classifier; changed in place.
        config: the defense and its settings.
        max_length: tokens per input (``model.max_length``); when given, it
            plus prefix tuning's ``defense.prefix.tokens`` virtual tokens must
            fit the model's position table (checked before the model is
            changed).

    Raises:
        ValueError: MSLR on a module that is not ``nn.Linear``, a model family
            with no known placement and no ``defense.mslr.target``;
            ``max_length`` (+ ``defense.prefix.tokens``) past the position
            table, naming ``model.max_length``, ``defense.prefix.tokens`` and
            the limit.
    """
    return make_defense(config).prepare(model, max_length=max_length)


def with_name(config: DefenseConfig, name: str) -> DefenseConfig:
    """``config`` with another defense name (settings kept; options dropped when the new defense takes none)."""
    return replace(config, name=name, options=config.options if defense_class(name).options else None)


__all__ = ["ADAPTER_LR", "DEFENSES", "FLAT_KEYS", "MUSCLE_CHANGES", "PROMPT_LR", "SECTIONS", "SMALL_MODEL",
           "DefenseConfig", "Prepared", "count_parameters", "nest_flat_keys", "prepare_model",
           "with_name"]
