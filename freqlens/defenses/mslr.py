"""The multi-scale low-rank layer (MSLR) of MuScleLoRA, wrapping any ``nn.Linear``.

MSLR adds to a frozen dense layer a low-rank update whose rank-one components
are scaled by fixed frequency-band values::

    y = W0 x + b0 + (alpha / r) * x (R diag(k) L)^T

with L of shape (B r, in), R of shape (out, B r) and k the B band values each
repeated r times (METHOD.md, section 3). Large k act as a downscaling of the
frequency space: the components they multiply fit high-frequency structure
with small weights, so learning shifts towards them and away from the low
frequencies a backdoor lives in.

Trainable parameters are named ``mslr_L`` and ``mslr_R`` (the prefix
:data:`MSLR_PREFIX` finds them in a state dict); the frozen base layer is kept
as the ``base`` child, and :func:`merge_mslr` folds the update into it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from freqlens._checks import check_choice, check_positive_int

MSLR_PREFIX = "mslr_"
INITS = ("paper", "zero")

# Band values per model size (METHOD.md, section 3).
BANDS = {
    "bert-base": (1, 4, 8, 12, 16, 20, 24, 28),
    "roberta-base": (1, 2, 4, 6, 8, 10, 12, 14, 16),
    "large": (1, 2, 3, 4, 5, 6, 7, 8, 9),
    "llm": (1, 2, 3, 4),
}


@dataclass(frozen=True)
class MSLRConfig:
    """Settings of a multi-scale low-rank layer.

    Attributes:
        bands: the band values k, each > 0 (the paper's code for BERT-base:
            1, 4, 8, ..., 28).
        rank: inner rank r per band (the paper: 1).
        alpha: the scale numerator (the paper: 6 for encoders, 4 for LLMs).
        dropout: dropout on the layer's input to the low-rank path.
        init: ``"paper"`` (L and R Kaiming-uniform, as the paper's code) or
            ``"zero"`` (R = 0, so the layer starts as the base layer, as LoRA
            does; freqlens' default, see METHOD.md pitfalls).
    """

    bands: tuple[float, ...] = BANDS["bert-base"]
    rank: int = 1
    alpha: float = 6.0
    dropout: float = 0.0
    init: str = "zero"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", check_bands(self.bands, "bands"))
        check_positive_int(self.rank, "rank")
        check_alpha_dropout(self.alpha, self.dropout, "")
        check_choice(self.init, "init", INITS)

    @property
    def width(self) -> int:
        """Inner width B r of the low-rank path."""
        return len(self.bands) * self.rank

    def to_dict(self) -> dict:
        return asdict(self)


def check_bands(bands, key: str) -> tuple[float, ...]:
    """``bands`` as a tuple of floats if it is a non-empty list of numbers > 0; else a ValueError naming ``key``."""
    given = tuple(bands) if isinstance(bands, Sequence) and not isinstance(bands, str) else bands
    if (not isinstance(given, tuple) or not given
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in given)):
        raise ValueError(f"Expected `{key}` to be a non-empty list of numbers > 0 but got {bands!r}.")
    return tuple(float(b) for b in given)


def check_alpha_dropout(alpha, dropout, key: str) -> None:
    """Refuse an MSLR ``alpha`` <= 0 or a ``dropout`` outside [0, 1), naming ``key + "alpha"`` / ``"dropout"``."""
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0):
        raise ValueError(f"Expected `{key}alpha` > 0 but got {alpha!r}.")
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0.0 <= dropout < 1.0):
        raise ValueError(f"Expected `{key}dropout` in [0, 1) but got {dropout!r}.")


@dataclass(frozen=True)
class MSLRSettings:
    """The config's ``[defense.mslr]`` table: MSLR as a defense places it (errors name ``defense.mslr.<key>``).

    Unset values (``()``, None, ``""``) take the model's and the defense's
    defaults when the defense prepares a model
    (:func:`~freqlens.defenses.placement.default_mslr_config`).
    """

    KEY: ClassVar[str] = "defense.mslr."

    bands: tuple[float, ...] = ()  # band values k, each > 0; () : per family and size (METHOD.md)
    rank: int = 1  # inner rank r per band
    alpha: float | None = None  # the scale numerator; None: 6 for encoders, 4 for decoders
    dropout: float = 0.0  # dropout on the input of the low-rank path, in [0, 1)
    init: str = ""  # "paper" (Kaiming-uniform L and R) or "zero" (R = 0); "": "paper" for muscle-paper, else "zero"
    target: tuple[str, ...] = ()  # () : the family's placement; else module names (each nn.Linear)

    def __post_init__(self) -> None:
        key = self.KEY
        for name in ("bands", "target"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,) if value else ()
            object.__setattr__(self, name, tuple(value) if isinstance(value, Sequence) else value)
        if self.bands:
            object.__setattr__(self, "bands", check_bands(self.bands, f"{key}bands"))
        elif not isinstance(self.bands, tuple):
            raise ValueError(f"Expected `{key}bands` to be a list of numbers > 0 but got {self.bands!r}.")
        check_positive_int(self.rank, f"{key}rank")
        check_alpha_dropout(1.0 if self.alpha is None else self.alpha, self.dropout, key)
        if self.init:
            check_choice(self.init, f"{key}init", INITS)
        if not all(isinstance(name, str) and name for name in self.target):
            raise ValueError(f"Expected `{key}target` to be module names but got {self.target!r}.")

    def overrides(self, init: str) -> dict:
        """Keyword arguments of :func:`~freqlens.defenses.placement.default_mslr_config` (None: the default);
        ``init`` is the defense's default initialisation, used when ``init`` is unset."""
        return {"bands": self.bands or None, "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "init": self.init or init}


class MSLRLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a multi-scale low-rank update.

    Args:
        base: the dense layer to wrap; its weight and bias are frozen.
        config: the MSLR settings.

    Example:
        >>> layer = MSLRLinear(nn.Linear(8, 4), MSLRConfig(bands=(1, 4), init="zero"))
        >>> sorted(n for n, p in layer.named_parameters() if p.requires_grad)
        ['mslr_L', 'mslr_R']
    """

    def __init__(self, base: nn.Linear, config: MSLRConfig | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"Expected `base` to be an nn.Linear but got {type(base).__name__}.")
        self.config = config = config or MSLRConfig()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.mslr_L = nn.Parameter(torch.empty(config.width, base.in_features, **factory))
        self.mslr_R = nn.Parameter(torch.empty(base.out_features, config.width, **factory))
        k = torch.tensor(config.bands, **factory).repeat_interleave(config.rank)
        self.register_buffer("mslr_k", k)
        self.scale = config.alpha / config.rank
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.reset_parameters()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (code that reads ``.weight`` of a Linear keeps working)."""
        return self.base.weight

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.mslr_L, a=math.sqrt(5))
        if self.config.init == "paper":
            nn.init.kaiming_uniform_(self.mslr_R, a=math.sqrt(5))
        else:
            nn.init.zeros_(self.mslr_R)

    def delta_weight(self) -> torch.Tensor:
        """The update (alpha / r) R diag(k) L, shape (out, in)."""
        return self.scale * (self.mslr_R * self.mslr_k) @ self.mslr_L

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.dropout(x) @ self.mslr_L.t()
        return self.base(x) + self.scale * (low * self.mslr_k) @ self.mslr_R.t()

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the update folded into the weight."""
        base = self.base
        layer = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                          device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(base.weight + self.delta_weight())
            if base.bias is not None:
                layer.bias.copy_(base.bias)
        return layer

    def extra_repr(self) -> str:
        c = self.config
        return f"bands={list(c.bands)}, rank={c.rank}, alpha={c.alpha}, init={c.init!r}"
