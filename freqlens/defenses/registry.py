"""The defense set, by name: what each trains, and how a model is prepared for it.

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
========================  ==================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from torch import nn

from freqlens._checks import check_choice, check_positive_int
from freqlens.defenses.adapters import DefendedLayout, LoraSettings, add_lora, add_prefix, check_input_length
from freqlens.defenses.ga import GAConfig
from freqlens.defenses.placement import apply_mslr, default_mslr_config

DEFENSES = ("vanilla", "lora", "mslr", "ga", "ga+lora", "muscle", "muscle-paper", "prefix", "abl", "reference-only")
SELECTIONS = ("auto", "best-dev", "last")

# How freqlens' `muscle` differs from `muscle-paper`, and the measurement behind each change.
MUSCLE_CHANGES = {
    "mslr_init": ("zero (R = 0)", "the paper's Kaiming-uniform L and R made all-MiniLM-L6-v2 predict the "
                  "target class for 84-87% of inputs before training (METHOD.md pitfalls)"),
    "reference_size": ("256", "with 96 reference examples GA behaves like fine-tuning on those 96 and "
                       "cost 5-13 clean-accuracy points (METHOD.md pitfalls)"),
    "lr": ("5e-4 for models under 100M parameters", "LoRA at the paper's 2e-5 did not learn SST-2 on "
           "all-MiniLM-L6-v2 (CACC 0.56); at 5e-4 it did (METHOD.md pitfalls)"),
}

SMALL_MODEL = 100_000_000  # parameters: below this, adapter defenses default to ADAPTER_LR
ADAPTER_LR = 5e-4  # LoRA on all-MiniLM-L6-v2 (METHOD.md pitfalls)
PROMPT_LR = 1e-2  # prefix / prompt tuning: the usual order for soft prompts (not tuned here)


@dataclass(frozen=True)
class DefenseSpec:
    """What a named defense is made of."""

    name: str
    lora: bool = False
    mslr: bool = False
    ga: bool = False
    prefix: bool = False
    abl: bool = False
    reference_only: bool = False
    paper: bool = False  # the published settings, without freqlens' changes

    @property
    def adapter(self) -> str:
        return "lora" if self.lora else "prefix" if self.prefix else "none"

    @property
    def needs_reference(self) -> bool:
        return self.ga or self.reference_only

    @property
    def defended(self) -> bool:
        return self.name != "vanilla"


SPECS = {
    "vanilla": DefenseSpec("vanilla"),
    "lora": DefenseSpec("lora", lora=True),
    "mslr": DefenseSpec("mslr", lora=True, mslr=True),
    "ga": DefenseSpec("ga", ga=True),
    "ga+lora": DefenseSpec("ga+lora", lora=True, ga=True),
    "muscle": DefenseSpec("muscle", lora=True, mslr=True, ga=True),
    "muscle-paper": DefenseSpec("muscle-paper", lora=True, mslr=True, ga=True, paper=True),
    "prefix": DefenseSpec("prefix", prefix=True),
    "abl": DefenseSpec("abl", abl=True),
    "reference-only": DefenseSpec("reference-only", reference_only=True),
}


@dataclass(frozen=True)
class DefenseConfig:
    """Which defense to train with, and its settings (defaults per defense where 0/None/"")."""

    name: str = "vanilla"  # one of DEFENSES
    lr: float | None = None  # None: 5e-4 for LoRA defenses on models < 100M parameters (not muscle-paper), 1e-2 for prefix, else train.lr
    select: str = "auto"  # "auto" (best dev accuracy for defended runs, last epoch for vanilla), "best-dev", "last"
    lora_r: int = 8  # LoRA rank (the paper: 8 for BERT/RoBERTa, 2 for LLMs)
    lora_alpha: float = 32.0  # LoRA alpha (the paper: 32 / 8)
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()  # () : peft's default modules for the model type
    mslr_bands: tuple[float, ...] = ()  # () : per family and size (METHOD.md)
    mslr_rank: int = 1  # inner rank r per band
    mslr_alpha: float | None = None  # None: 6 for encoders, 4 for decoders
    mslr_dropout: float = 0.0
    mslr_init: str = ""  # "paper" or "zero"; "": "paper" for muscle-paper, "zero" otherwise
    mslr_target: tuple[str, ...] = ()  # () : the family's placement; else module names (each nn.Linear)
    reference_size: int | None = None  # None: 96 for muscle-paper (the paper's), 256 for the others
    ga_loss_threshold: float = 0.4
    ga_norm_threshold: float = 5e-7
    ga_mu: float = 0.1
    ga_pure: bool = False  # pure alignment throughout (the paper's LLM setting)
    ga_subspace: int = 1  # reference gradients spanning each tensor's projection (1: the paper's rule)
    prefix_tokens: int = 10  # virtual tokens of prefix tuning
    abl_isolation_rate: float = 0.01  # share of training examples isolated as suspected poison
    abl_isolation_epochs: int = 1  # epochs of local gradient ascent before isolating
    abl_gamma: float = 0.5  # the loss floor of local gradient ascent
    abl_unlearn_epochs: int = 1  # final epochs of gradient ascent on the isolated examples
    abl_unlearn_lr: float | None = None  # None: a tenth of the training lr
    save_model: bool = False  # write the trained model (adapter + MSLR + settings) to OUT/model

    def __post_init__(self) -> None:
        check_choice(self.name, "defense.name", DEFENSES)
        check_choice(self.select, "defense.select", SELECTIONS)
        for name in ("lora_targets", "mslr_bands", "mslr_target"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,) if value else ()
            object.__setattr__(self, name, tuple(value))
        if self.mslr_init:
            check_choice(self.mslr_init, "defense.mslr_init", ("paper", "zero"))
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"Expected `defense.lr` > 0 or None but got {self.lr!r}.")
        if self.reference_size is not None:
            check_positive_int(self.reference_size, "defense.reference_size")
        if not (isinstance(self.abl_isolation_rate, (int, float)) and 0 < self.abl_isolation_rate < 1):
            raise ValueError(f"Expected `defense.abl_isolation_rate` in (0, 1) but got {self.abl_isolation_rate!r}.")
        check_positive_int(self.abl_isolation_epochs, "defense.abl_isolation_epochs")
        check_positive_int(self.abl_unlearn_epochs, "defense.abl_unlearn_epochs", minimum=0)
        # settings that build objects are checked here, before any training
        self.lora_settings()
        self.ga_config()
        self.mslr_overrides()

    @property
    def spec(self) -> DefenseSpec:
        return SPECS[self.name]

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout, targets=self.lora_targets)

    def ga_config(self) -> GAConfig:
        try:
            return GAConfig(loss_threshold=self.ga_loss_threshold, norm_threshold=self.ga_norm_threshold,
                            mu=self.ga_mu, pure=self.ga_pure, subspace=self.ga_subspace)
        except ValueError as error:  # name the config keys, not GAConfig's fields
            message = str(error)
            for field in ("loss_threshold", "norm_threshold", "mu", "subspace"):
                message = message.replace(f"`{field}`", f"`defense.ga_{field}`")
            raise ValueError(f"Invalid gradient-alignment setting: {message}") from error

    def mslr_overrides(self) -> dict:
        from freqlens.defenses.mslr import MSLRConfig

        init = self.mslr_init or ("paper" if self.spec.paper else "zero")
        overrides = {"rank": self.mslr_rank, "dropout": self.mslr_dropout, "init": init,
                     "alpha": self.mslr_alpha, "bands": self.mslr_bands or None}
        try:  # validate now, naming the config keys
            MSLRConfig(bands=self.mslr_bands or (1.0,), rank=self.mslr_rank, dropout=self.mslr_dropout, init=init,
                       alpha=self.mslr_alpha or 1.0)
        except ValueError as error:
            raise ValueError(f"Invalid MSLR setting in `defense.mslr_*`: {error}".replace(
                "`bands`", "`defense.mslr_bands`").replace("`rank`", "`defense.mslr_rank`").replace(
                "`alpha`", "`defense.mslr_alpha`").replace("`dropout`", "`defense.mslr_dropout`")) from error
        return overrides

    def resolved_reference_size(self) -> int:
        if self.reference_size is not None:
            return self.reference_size
        return 96 if self.spec.paper else 256

    def selects_best(self) -> bool:
        if self.select == "auto":
            return self.spec.defended
        return self.select == "best-dev"

    def learning_rate(self, model: nn.Module, train_lr: float) -> float:
        """The lr this defense trains with on ``model`` (see :data:`MUSCLE_CHANGES`)."""
        if self.lr is not None:
            return float(self.lr)
        spec = self.spec
        if spec.prefix:
            return PROMPT_LR
        if spec.lora and not spec.paper and count_parameters(model) < SMALL_MODEL:
            return ADAPTER_LR
        return float(train_lr)

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Prepared:
    """A model made ready for a defense."""

    model: nn.Module  # the model to train (a peft model when an adapter is on)
    layout: DefendedLayout  # how to rebuild it (for save/load)
    mslr_layers: list[str]  # names of the MSLR layers placed


def prepare_model(model: nn.Module, config: DefenseConfig, *, max_length: int | None = None) -> Prepared:
    """Place MSLR and adapters for ``config``'s defense; fails before training on a bad setting.

    Args:
        model: a Hugging Face sequence classifier; changed in place.
        config: the defense and its settings.
        max_length: tokens per input (``model.max_length``); when given, it
            plus prefix tuning's ``defense.prefix_tokens`` virtual tokens must
            fit the model's position table (checked before the model is
            changed).

    Raises:
        ValueError: MSLR on a module that is not ``nn.Linear``, a model family
            with no known placement and no ``mslr_target``, bad bands;
            ``max_length`` (+ ``defense.prefix_tokens``) past the position
            table, naming ``model.max_length``, ``defense.prefix_tokens`` and
            the limit.
    """
    spec = config.spec
    if max_length is not None:
        check_positive_int(max_length, "model.max_length")
        check_input_length(model, max_length, tokens=config.prefix_tokens if spec.prefix else 0)
    placed: list[str] = []
    mslr = None
    if spec.mslr:
        mslr = default_mslr_config(model, **config.mslr_overrides())
        placed = apply_mslr(model, mslr, target=list(config.mslr_target) or None)
    if spec.lora:
        model = add_lora(model, config.lora_settings())
    elif spec.prefix:
        model = add_prefix(model, config.prefix_tokens)
    layout = DefendedLayout(mslr=mslr.to_dict() if mslr else None, mslr_targets=tuple(config.mslr_target),
                            adapter=getattr(model, "freqlens_adapter", spec.adapter))
    return Prepared(model=model, layout=layout, mslr_layers=placed)


def with_name(config: DefenseConfig, name: str) -> DefenseConfig:
    """``config`` with another defense name (settings kept)."""
    return replace(config, name=name)
