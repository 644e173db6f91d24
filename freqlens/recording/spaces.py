"""Input spaces: where the probe kernel's inputs come from.

The filtering method smooths a mapping over a probe set with a Gaussian
kernel on distances between the probes' inputs; which vectors those are
decides what "low frequency" means. Every space is computed once, from the
model as it is before training (:meth:`freqlens.Recorder.start`), in eval mode
and float32, and stored with the trajectory
(:meth:`freqlens.recording.Trajectory.kernel_inputs`). Built in:

``"flattened"``
    the embedding layer's outputs, padding zeroed, flattened to L * d (the
    paper's; :func:`freqlens.models.embedding_inputs`).
``"mean-pooled"``
    the embedding layer's outputs averaged over the attention-mask positions,
    d values (:func:`freqlens.models.pooled_embedding_inputs`).
``"hidden:K"``
    hidden layer K's states (K an integer, Python indexing over
    ``output_hidden_states``: 0 = embeddings, -1 = the last layer) averaged
    over the attention mask, d values
    (:func:`freqlens.models.pooled_hidden_inputs`).

and any function registered with :func:`register_input_space`, or named by
an import string ``"package.module:function"`` (in a config:
``record.input_spaces = ["flattened", "mypkg.spaces:sentence_vectors"]``).
A function takes ``(model, encodings)`` (the model unwrapped from peft and
data-parallel wrappers, in eval mode under ``torch.inference_mode``; the
encodings a dict of tensors with N rows, padded to one length) and returns
an (N, D) array of finite numbers.

Example:
    >>> import numpy as np
    >>> def lengths(model, encodings):
    ...     return encodings["attention_mask"].sum(1, keepdim=True).float().numpy()
    >>> register_input_space("length", lengths)
    >>> [space.name for space in resolve_input_spaces(["flattened", "length"])]
    ['flattened', 'length']
    >>> unregister_input_space("length")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from freqlens._checks import IMPORT_PATH, import_object
from freqlens.models import (
    embedding_inputs,
    eval_mode,
    pooled_embedding_inputs,
    pooled_hidden_inputs,
    resolve_probe_layer,
)

FLATTENED = "flattened"
MEAN_POOLED = "mean-pooled"
HIDDEN = "hidden"
#: The built-in spaces, as a user writes them (``hidden:K`` for any integer K).
BUILT_IN = (FLATTENED, MEAN_POOLED, "hidden:K")
#: What a Recorder and ``record.input_spaces`` record by default (the first: ``Trajectory.inputs``).
DEFAULT_INPUT_SPACES = (FLATTENED, MEAN_POOLED, "hidden:-1")

SpaceFunction = Callable[[nn.Module, Mapping[str, torch.Tensor]], "np.ndarray"]
_HIDDEN = re.compile(r"^hidden:([+-]?\d+)$")
_REGISTERED: dict[str, SpaceFunction] = {}


@dataclass(frozen=True)
class InputSpace:
    """One input space, resolved from its name.

    Attributes:
        name: as the user wrote it (``"flattened"``, ``"hidden:-1"``,
            ``"mypkg.spaces:vectors"``, a registered name).
        kind: ``"flattened"``, ``"mean-pooled"``, ``"hidden"`` or ``"function"``.
        layer: the hidden-state index for ``"hidden"``, else None.
        function: the user function for ``"function"``, else None.
    """

    name: str
    kind: str
    layer: int | None = None
    function: SpaceFunction | None = None

    def compute(self, model: nn.Module, encodings: Mapping[str, torch.Tensor], *,
                embedding_layer: nn.Module | None = None, batch_size: int = 128) -> tuple[np.ndarray, str]:
        """The kernel inputs of ``encodings`` in this space, and a description.

        Args:
            model: the model before training, unwrapped (no peft or DDP wrapper).
            encodings: the probe set's inputs, N rows padded to one length L.
            embedding_layer: where to read the embeddings (flattened and
                mean-pooled; default: the model's own layer).
            batch_size: rows per forward pass.

        Returns:
            (float32 array (N, D), a sentence naming the layer, the pooling and D).

        Raises:
            ValueError: a hidden layer the model does not have, or a user
                function that returns other than N rows of finite numbers.
        """
        if self.kind in (FLATTENED, MEAN_POOLED):
            layer, mode = resolve_probe_layer(model, embedding_layer)
            where = f"{mode} of {type(layer).__name__}"
            if self.kind == FLATTENED:
                values = embedding_inputs(model, encodings, module=layer, mode=mode, batch_size=batch_size)
                length = int(next(iter(encodings.values())).shape[1])
                width = values.shape[1] // max(length, 1)
                return values, (f"embedding-layer outputs ({where}) at initialisation, padding zeroed, "
                                f"flattened: D = L * d = {length} * {width} = {values.shape[1]}")
            values = pooled_embedding_inputs(model, encodings, module=layer, mode=mode, batch_size=batch_size)
            return values, (f"embedding-layer outputs ({where}) at initialisation, averaged over the "
                            f"attention mask: D = d = {values.shape[1]}")
        if self.kind == HIDDEN:
            try:
                values, count = pooled_hidden_inputs(model, encodings, layer=self.layer, batch_size=batch_size)
            except ValueError as error:
                raise ValueError(f"Expected input space {self.name!r} to name a hidden layer of the model: "
                                 f"{error}") from error
            index = self.layer % count
            which = "the embedding output" if index == 0 else f"the output of layer {index} of {count - 1}"
            return values, (f"hidden state {self.layer} ({which}; output_hidden_states) of "
                            f"{type(model).__name__} at initialisation, averaged over the attention mask: "
                            f"D = d = {values.shape[1]}")
        return self._call(model, encodings)

    def _call(self, model: nn.Module, encodings: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, str]:
        n = len(next(iter(encodings.values())))
        with eval_mode(model), torch.inference_mode():
            result = self.function(model, dict(encodings))
        if isinstance(result, torch.Tensor):
            result = result.detach().float().cpu().numpy()
        values = np.asarray(result, dtype=np.float32)
        if values.ndim != 2 or values.shape[0] != n:
            raise ValueError(f"Expected input space {self.name!r} to return an array of shape ({n}, D) "
                             f"(one row per probe example) but got shape {values.shape}.")
        if not np.isfinite(values).all():
            raise ValueError(f"Expected input space {self.name!r} to return finite numbers but it returned "
                             f"{int((~np.isfinite(values)).sum())} NaN or infinite value(s).")
        function = self.function
        label = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"
        doc = (getattr(function, "__doc__", None) or "").strip().splitlines()
        summary = f" ({doc[0].strip()})" if doc and doc[0].strip() else ""
        return values, f"user function {label}{summary} at initialisation: D = {values.shape[1]}"


def register_input_space(name: str, function: SpaceFunction) -> None:
    """Make ``function`` an input space called ``name``.

    Args:
        name: how recorders and configs name it; not a built-in name, not
            ``"hidden:K"`` and without ``":"`` (which marks an import string).
        function: ``function(model, encodings) -> (N, D)`` array (see the
            module docstring).

    Raises:
        ValueError: a reserved or malformed name, or a function that is not callable.
    """
    if not isinstance(name, str) or not name or ":" in name or name in (FLATTENED, MEAN_POOLED, HIDDEN):
        raise ValueError(f"Expected `name` to be a non-empty string without ':' other than the built-in "
                         f"spaces {BUILT_IN} but got {name!r}.")
    if not callable(function):
        raise ValueError(f"Expected `function` to be callable (model, encodings) -> (N, D) but got {function!r}.")
    _REGISTERED[name] = function


def unregister_input_space(name: str) -> None:
    """Remove a space added by :func:`register_input_space` (no-op if absent)."""
    _REGISTERED.pop(name, None)


def registered_input_spaces() -> list[str]:
    """The names of the spaces added by :func:`register_input_space`."""
    return list(_REGISTERED)


def _choices() -> str:
    extra = f", the registered {registered_input_spaces()}" if _REGISTERED else ""
    return f"one of the built-in spaces {BUILT_IN}{extra}, or an import string 'package.module:function'"


def resolve_input_space(name: str, *, argument: str = "input_spaces") -> InputSpace:
    """The :class:`InputSpace` that ``name`` names.

    Args:
        name: ``"flattened"``, ``"mean-pooled"``, ``"hidden:K"``, a registered
            name, or ``"package.module:function"``.
        argument: how the caller calls the setting in error messages
            (``"record.input_spaces"`` in a config).

    Raises:
        ValueError: naming ``argument``, the name, and the choices; or an
            import string whose module or function cannot be loaded.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Expected each of `{argument}` to be {_choices()} but got {name!r}.")
    if name in (FLATTENED, MEAN_POOLED):
        return InputSpace(name, name)
    hidden = _HIDDEN.match(name)
    if hidden:
        return InputSpace(name, HIDDEN, layer=int(hidden.group(1)))
    if name in _REGISTERED:
        return InputSpace(name, "function", function=_REGISTERED[name])
    if IMPORT_PATH.match(name) and not name.startswith(f"{HIDDEN}:"):
        target = import_object(name, argument)
        if not callable(target):
            raise ValueError(f"Expected `{argument}` entry {name!r} to name a function (model, encodings) -> "
                             f"(N, D) but it names {target!r}.")
        return InputSpace(name, "function", function=target)
    raise ValueError(f"Expected each of `{argument}` to be {_choices()} but got {name!r}.")


def resolve_input_spaces(names: Sequence[str] | str, *, argument: str = "input_spaces") -> list[InputSpace]:
    """Resolve a non-empty list of distinct space names (see :func:`resolve_input_space`).

    Raises:
        ValueError: naming ``argument``: not a list of names, empty, a
            repeated name, or a name that is no input space.
    """
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"Expected `{argument}` to be a non-empty list of input spaces ({_choices()}) but got "
                         f"{names!r}.")
    names = list(names)
    repeated = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if repeated:
        raise ValueError(f"Expected `{argument}` to name each input space once but {repeated} repeat.")
    return [resolve_input_space(name, argument=argument) for name in names]


def check_input_spaces(model: nn.Module, names: Sequence[str] | str, *, argument: str = "input_spaces") -> None:
    """Check, without a forward pass, that every hidden-layer space names a layer ``model`` has.

    Uses ``model.config.num_hidden_layers`` (the hidden states are the
    embedding output plus one per layer); a model without it is checked when
    the spaces are computed. Meant to run before anything is written, so a bad
    ``record.input_spaces`` fails before the run starts.

    Raises:
        ValueError: an unknown space, or a hidden layer index out of range,
            naming ``argument``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    for space in resolve_input_spaces(names, argument=argument):
        if space.kind != HIDDEN or not isinstance(layers, int):
            continue
        count = layers + 1
        if not -count <= space.layer < count:
            raise ValueError(
                f"Expected `{argument}` to name hidden layers of {type(base).__name__} (indices in "
                f"[{-count}, {count - 1}]: {count} hidden states, 0 = the embeddings) but got {space.name!r}."
            )
