"""A defense as an object, and the registry of defenses by name (``defense.name``).

A defense is a subclass of :class:`Defense` registered under a name with
:func:`register_defense`, as peft registers its methods and freqlens its
embedding rules. The built-in defenses register themselves the same way, in
their family's module (:mod:`~freqlens.defenses.plain`,
:mod:`~freqlens.defenses.low_rank`, :mod:`~freqlens.defenses.aligned`,
:mod:`~freqlens.defenses.abl`). What a defense says about itself:

- ``needs_reference``: it trains with a clean reference set, split off the
  training data (``defense.reference_size`` examples, default
  ``default_reference_size``);
- ``adapter``: the peft adapter it puts on (``"none"``, ``"lora"``,
  ``"prefix"``), for the saved layout and ``results.json``;
- ``defended``: False for plain fine-tuning (``defense.select = "auto"``
  then keeps the last epoch, not the best on clean dev);
- ``options``: a frozen dataclass of its own settings, read from the
  config's ``[defense.options]`` table (errors name
  ``defense.options.<key>``); None when it takes none;
- :meth:`Defense.place`: how it changes a model before training;
- :meth:`Defense.train`: how it trains, and what it adds to ``results.json``.

:func:`make_defense` builds the registered defense for a
:class:`~freqlens.defenses.registry.DefenseConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from freqlens._checks import check_positive_int
from freqlens._registry import Registry
from freqlens.defenses.adapters import DefendedLayout, _base_model, check_input_length
from freqlens.defenses.placement import mslr_layers
from freqlens.training import TrainConfig, TrainResult, train

if TYPE_CHECKING:  # pragma: no cover
    from freqlens.defenses.registry import DefenseConfig

ADAPTERS = ("none", "lora", "prefix")  # what Defense.adapter may be (save_defended and load_defended know these)
DEFAULT_REFERENCE_SIZE = 256  # clean reference examples (METHOD.md pitfalls: 96 cost 5-13 CACC points)


@dataclass
class Prepared:
    """A model made ready for a defense."""

    model: nn.Module  # the model to train (a peft model when an adapter is on)
    layout: DefendedLayout  # how to rebuild it (for save/load)
    mslr_layers: list[str]  # names of the MSLR layers placed


@dataclass
class Placed:
    """What :meth:`Defense.place` did to a model."""

    model: nn.Module  # the model to train (the same object, or the peft model wrapping it)
    mslr: dict | None = None  # the MSLRConfig fields of the MSLR layers placed, or None
    mslr_layers: list[str] | None = None  # their names (None: none placed)
    mslr_targets: tuple[str, ...] = ()  # the module names given for them (empty: the family's placement)


class Defense:
    """Base of every defense: full fine-tuning unless a subclass places or trains otherwise.

    A subclass sets the class attributes below and overrides :meth:`place`
    (change the model before training) and/or :meth:`train` (the training
    loop); :meth:`prepare` and :meth:`fit` wrap them with the checks and the
    bookkeeping every defense shares (input lengths, reference set, learning
    rate, checkpoint selection, ``results.json`` entries).

    Args:
        config: the ``[defense]`` section; ``config.options`` holds the
            defense's own settings (an instance of :attr:`options`) or is
            empty.
    """

    needs_reference: ClassVar[bool] = False  # trains with a clean reference set
    adapter: ClassVar[str] = "none"  # the peft adapter it adds: "none", "lora" or "prefix"
    defended: ClassVar[bool] = True  # False: plain fine-tuning ("auto" selection keeps the last epoch)
    default_reference_size: ClassVar[int] = DEFAULT_REFERENCE_SIZE  # when `defense.reference_size` is unset
    options: ClassVar[type | None] = None  # the dataclass of its [defense.options] settings, or None

    @classmethod
    def upgrade_stored(cls, table: dict) -> dict:
        """A stored ``[defense]`` table (nested keys, a copy) of an earlier freqlens, as that version ran
        it: where a default changed, a subclass writes the earlier value into a table that lacks the key,
        so that the run groups with, and resumes as, a run of this version with the same behaviour
        (:meth:`freqlens.config.ExperimentConfig.upgrade`). The base returns ``table`` unchanged."""
        return table

    def __init__(self, config: DefenseConfig) -> None:
        self.config = config
        self.name = config.name  # the name it is registered (and configured) under
        self.placed: list[str] | None = None  # MSLR layers placed by prepare(), once called

    # ---------------------------------------------------------------- what it needs
    @property
    def settings(self):
        """This defense's own settings (an instance of :attr:`options`), or None when it takes none."""
        return self.config.options or None

    @property
    def reference_size(self) -> int:
        """Clean reference examples to split off the training data (``defense.reference_size`` or the default)."""
        size = self.config.reference_size
        return self.default_reference_size if size is None else size

    def selects_best(self) -> bool:
        """Whether training keeps the epoch with the best clean dev accuracy (``defense.select``)."""
        if self.config.select == "auto":
            return self.defended
        return self.config.select == "best-dev"

    def learning_rate(self, model: nn.Module, train_lr: float) -> float:
        """The lr to train ``model`` with: ``defense.lr`` when set, else :meth:`default_lr`."""
        if self.config.lr is not None:
            return float(self.config.lr)
        return float(self.default_lr(model, train_lr))

    def default_lr(self, model: nn.Module, train_lr: float) -> float:
        """The lr when ``defense.lr`` is unset: ``train.lr`` (``train_lr``) unless a defense knows better."""
        return float(train_lr)

    def virtual_tokens(self) -> int:
        """Tokens the defense will put before every input (prefix tuning); 0 for most."""
        return 0

    # ---------------------------------------------------------------- preparing
    def place(self, model: nn.Module) -> Placed:
        """Change ``model`` for training (in place, or wrapped); the base trains it as it is."""
        return Placed(model)

    def prepare(self, model: nn.Module, *, max_length: int | None = None) -> Prepared:
        """Make ``model`` ready for this defense; fails before training on a bad setting.

        Args:
            model: a Hugging Face sequence classifier; changed in place.
            max_length: tokens per input (``model.max_length``); when given,
                it plus the defense's virtual tokens (prefix tuning's
                ``defense.prefix.tokens``) must fit the model's position
                table (checked before the model is changed).

        Returns:
            The :class:`Prepared` model, its layout (for
            :func:`~freqlens.defenses.adapters.save_defended`) and the MSLR
            layers placed.

        Raises:
            ValueError: ``max_length`` (+ the virtual tokens) past the
                position table, naming ``model.max_length``,
                ``defense.prefix.tokens`` and the limit; whatever
                :meth:`place` refuses (an MSLR target that is not an
                ``nn.Linear``, a family with no known placement), named.
        """
        if max_length is not None:
            check_positive_int(max_length, "model.max_length")
            check_input_length(model, max_length, tokens=self.virtual_tokens())
        placed = self.place(model)
        if not isinstance(placed, Placed):  # a plug-in's mistake, named before any training
            raise TypeError(f"Expected {type(self).__name__}.place (defense {self.name!r}) to return "
                            f"freqlens.defenses.Placed(model, ...) but it returned {type(placed).__name__}.")
        self.placed = list(placed.mslr_layers or [])
        layout = DefendedLayout(mslr=placed.mslr, mslr_targets=tuple(placed.mslr_targets),
                                adapter=getattr(placed.model, "freqlens_adapter", self.adapter))
        return Prepared(model=placed.model, layout=layout, mslr_layers=self.placed)

    # ---------------------------------------------------------------- training
    def train(self, model: nn.Module, encodings: Mapping[str, torch.Tensor], labels: np.ndarray,
              config: TrainConfig, *, reference: tuple[Mapping[str, torch.Tensor], np.ndarray] | None,
              selector: Callable[[nn.Module], float] | None, poison: np.ndarray | None, recorder,
              progress: bool, checkpoint) -> tuple[TrainResult, dict]:
        """Train ``model`` with ``config`` (its lr already this defense's); returns the result and what to add
        to ``results.json`` under ``defense`` (the base: plain :func:`~freqlens.training.train`, nothing)."""
        result = train(model, encodings, labels, config, recorder=recorder, progress=progress, selector=selector,
                       checkpoint=checkpoint)
        return result, {}

    def fit(self, model: nn.Module, encodings: Mapping[str, torch.Tensor], labels: np.ndarray,
            train_config: TrainConfig, *, reference: tuple[Mapping[str, torch.Tensor], np.ndarray] | None = None,
            selector: Callable[[nn.Module], float] | None = None, poison: np.ndarray | None = None,
            recorder=None, progress: bool = True, checkpoint=None) -> tuple[TrainResult, dict]:
        """Train ``model`` (already :meth:`prepare`-d) with this defense.

        Args:
            model: the prepared model.
            encodings, labels: the (poisoned) training set, tensors of shape
                (N, L) and N labels.
            train_config: optimisation settings; its ``lr`` is the
                ``train.lr`` that :meth:`learning_rate` may replace.
            reference: the clean reference set (encodings, labels); needed
                when :attr:`needs_reference`.
            selector: clean dev accuracy of a model, for checkpoint selection
                (used when :meth:`selects_best`).
            poison: which training examples are poisoned (N booleans; ABL's report).
            recorder, progress, checkpoint: as in :func:`freqlens.training.train`.

        Returns:
            The :class:`~freqlens.training.TrainResult` and the dict that
            goes into ``results.json`` as ``defense``: name, adapter, lr,
            trainable and total parameters, selection, ``clean_examples``
            (the size of the clean reference set it trained with, 0 for
            none), ``mslr_layers``, what
            :meth:`train` adds, and with selection the dev accuracy per epoch
            and the best epoch.

        Raises:
            ValueError: before any training step: no reference set for a
                defense that needs one; inputs (the encodings' width) that
                with prefix tuning's virtual tokens do not fit the model's
                position table. After training, a plug-in's :meth:`train`
                that broke the contract (ValueError or TypeError naming the
                class): it returned something other than ``(TrainResult,
                dict)``, a dict key every defense writes itself (``name``,
                ``lr``, ...), or never started the recorder it was given.
        """
        if self.needs_reference and reference is None:
            raise ValueError(f"Expected a clean reference set for defense {self.name!r} but got none.")
        for inputs in (encodings, reference[0] if reference is not None else None):
            width = _width(inputs)
            if width is not None:
                check_input_length(model, width)
        lr = self.learning_rate(model, train_config.lr)
        select = selector if self.selects_best() else None
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        info: dict = {"name": self.name, "adapter": getattr(model, "freqlens_adapter", self.adapter), "lr": lr,
                      "trainable_parameters": int(trainable),
                      "total_parameters": int(sum(p.numel() for p in model.parameters())),
                      "selection": "best-dev" if select else "last",
                      "clean_examples": 0 if reference is None else int(len(reference[1]))}
        trained = self.train(model, encodings, labels, replace(train_config, lr=lr), reference=reference,
                             selector=select, poison=poison, recorder=recorder, progress=progress,
                             checkpoint=checkpoint)
        result, done = self._check_trained(trained, recorder, info)
        info.update(done)
        if select is not None:
            info["epoch_dev_accuracy"] = [round(s, 4) for s in result.epoch_scores]
            info["best_epoch"] = result.best_epoch
        placed = self.placed if self.placed is not None else list(mslr_layers(_base_model(model)))
        info["mslr_layers"] = placed
        return result, info


    def _check_trained(self, trained, recorder, info: Mapping) -> tuple[TrainResult, Mapping]:
        """What :meth:`train` returned, checked against the contract, naming the class and the defense."""
        where = f"{type(self).__name__}.train (defense {self.name!r})"
        if not (isinstance(trained, tuple) and len(trained) == 2 and isinstance(trained[0], TrainResult)
                and isinstance(trained[1], Mapping)):
            raise TypeError(f"Expected {where} to return (TrainResult, dict of what to add to results.json) but it "
                            f"returned {type(trained).__name__}: {trained!r:.200}.")
        clashing = sorted(set(trained[1]) & set(info))
        if clashing:
            raise ValueError(f"Expected {where} to add new keys to results.json's `defense` but it returned "
                             f"{clashing}, which every defense writes itself.")
        if recorder is not None and not recorder.started:
            raise ValueError(f"Expected {where} to pass `recorder=` on to freqlens.training.train (or to step it "
                             "itself) but the recorder took no snapshot: the run has no trajectory.")
        return trained


def _width(encodings: Mapping[str, torch.Tensor] | None) -> int | None:
    """Tokens per row of tokenised inputs (their second dimension), or None."""
    if not encodings:
        return None
    ids = encodings.get("input_ids", next(iter(encodings.values())))
    return int(ids.shape[1]) if getattr(ids, "ndim", 0) >= 2 else None


# -------------------------------------------------------------------- the registry
_REGISTRY = Registry("defense", Defense, "freqlens.defenses.Defense")


def register_defense(name: str, cls: type[Defense], *, replace: bool = False) -> type[Defense]:
    """Make ``cls`` the defense called ``name`` (``defense.name = name``); returns ``cls``.

    Raises:
        TypeError: ``cls`` is not a subclass of :class:`Defense`, or its
            ``options`` is neither None nor a dataclass.
        ValueError: ``name`` is empty or not a string, or already registered
            and ``replace`` is False; ``cls.adapter`` is not one of :data:`ADAPTERS`.
    """
    if isinstance(cls, type) and issubclass(cls, Defense) and cls.adapter not in ADAPTERS:
        raise ValueError(f"Expected `{cls.__name__}.adapter` to be one of {ADAPTERS} but got {cls.adapter!r}.")
    return _REGISTRY.register(name, cls, replace=replace)


def unregister_defense(name: str) -> None:
    """Forget the defense called ``name``.

    Raises:
        KeyError: no defense is registered under ``name``.
    """
    _REGISTRY.unregister(name)


def defense_class(name: str) -> type[Defense]:
    """The class registered as ``name``.

    A name not registered but written ``module:Class`` (``my_defenses:LabelSmoothing``)
    imports ``module`` and registers its ``Class`` (a :class:`Defense`
    subclass) under that name, so that ``freqlens run --set
    defense.name=my_defenses:LabelSmoothing`` finds a defense defined outside
    freqlens (a module on ``sys.path``, e.g. in the working directory).

    Raises:
        ValueError: no such defense, naming ``defense.name`` and the
            registered names; a ``module:Class`` whose module cannot be
            imported or has no such :class:`Defense` subclass.
    """
    return _REGISTRY.lookup(name, "defense.name")


def make_defense(config: DefenseConfig) -> Defense:
    """The registered defense ``config.name``, built with ``config``."""
    return defense_class(config.name)(config)


#: The registered defense names, in registration order: a live view (registering one adds it).
DEFENSES = _REGISTRY.names
