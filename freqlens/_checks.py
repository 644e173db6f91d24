"""Argument checks shared across freqlens.

Every public function validates user input here, so that a bad argument gets
one clear message: the argument's name, what was expected and what came.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array, torch tensor or nested sequence of numbers


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError."""
    if value not in choices:
        raise ValueError(f"Expected `{name}` to be one of {tuple(choices)} but got {value!r}.")
    return value


def to_numpy(values: ArrayLike, name: str) -> np.ndarray:
    """Convert a numpy array, torch tensor or sequence to a numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype not in (torch.float16, torch.float32, torch.float64):
            values = values.float()  # bfloat16 and other types numpy does not know
        return values.numpy()
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"Expected `{name}` to be a numpy array or torch tensor but got "
            f"{type(values).__name__} ({error})."
        ) from error


def check_finite(array: np.ndarray, name: str) -> np.ndarray:
    """Raise a ValueError naming ``name`` if ``array`` holds NaN or inf."""
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"Expected `{name}` to hold real numbers but got dtype {array.dtype}.")
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(
            f"Expected `{name}` to be finite but it holds {bad} NaN or infinite "
            f"value(s) out of {array.size}."
        )
    return array


def as_matrix(values: ArrayLike, name: str, *, keep_float32: bool = False) -> np.ndarray:
    """Return ``values`` as a finite float64 matrix of shape (N, D) with N >= 1.

    With ``keep_float32``, float32 values stay float32 (no copy for large inputs).
    """
    array = to_numpy(values, name)
    if array.ndim != 2:
        raise ValueError(
            f"Expected `{name}` to be a 2-D array of shape (N, D) but got shape {array.shape}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"Expected `{name}` to be a non-empty (N, D) array but got shape {array.shape}: "
            "the probe set is empty."
        )
    dtype = np.float32 if keep_float32 and array.dtype == np.float32 else np.float64
    return np.ascontiguousarray(check_finite(array, name), dtype=dtype)


def as_widths(widths: ArrayLike, name: str = "widths") -> np.ndarray:
    """Return filter widths as a 1-D float64 array, all finite and > 0."""
    array = np.atleast_1d(to_numpy(widths, name))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"Expected `{name}` to be a non-empty 1-D sequence of positive numbers "
            f"but got shape {array.shape}."
        )
    check_finite(array, name)
    if np.any(array <= 0):
        raise ValueError(
            f"Expected every entry of `{name}` to be > 0 but got "
            f"{array[array <= 0].tolist()}."
        )
    return array.astype(np.float64)


def as_outputs(values: ArrayLike, n: int, name: str = "outputs") -> np.ndarray:
    """Return model outputs as a finite float64 array of shape (T, N, C)."""
    array = to_numpy(values, name)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(
            f"Expected `{name}` to have shape (N, C) or (T, N, C) but got shape {array.shape}."
        )
    if array.shape[1] != n:
        raise ValueError(
            f"Expected `{name}` to have N={n} rows, one per probe input, but got "
            f"{array.shape[1]} (shape {array.shape})."
        )
    if array.shape[0] == 0 or array.shape[2] == 0:
        raise ValueError(f"Expected `{name}` to be non-empty but got shape {array.shape}.")
    return np.ascontiguousarray(check_finite(array, name), dtype=np.float64)


def as_targets(values: ArrayLike, n: int, num_classes: int, name: str = "targets") -> np.ndarray:
    """Return targets as a float64 (N, C) matrix.

    Accepts integer class labels of shape (N,) (one-hot encoded here) or a
    matrix of shape (N, C) (one-hot or soft targets).
    """
    array = to_numpy(values, name)
    if array.ndim == 1:
        if array.shape[0] != n:
            raise ValueError(
                f"Expected `{name}` to have N={n} labels, one per probe input, but got "
                f"{array.shape[0]}."
            )
        check_finite(array, name)
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"Expected `{name}` of shape (N,) to hold integer class labels.")
        labels = array.astype(np.int64)
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.size:
            raise ValueError(
                f"Expected `{name}` labels in [0, {num_classes}) to match the {num_classes} "
                f"output classes but got {sorted(set(outside.tolist()))}."
            )
        return np.eye(num_classes, dtype=np.float64)[labels]
    if array.ndim != 2 or array.shape != (n, num_classes):
        raise ValueError(
            f"Expected `{name}` to have shape (N,) or (N, C) = ({n}, {num_classes}) but got "
            f"shape {array.shape}."
        )
    return check_finite(array, name).astype(np.float64, copy=False)


def as_index(subset: ArrayLike, n: int, name: str = "subset") -> np.ndarray:
    """Return row indices from a boolean mask of length N or an integer index array."""
    array = np.atleast_1d(to_numpy(subset, name))
    if array.dtype == bool:
        if array.shape != (n,):
            raise ValueError(
                f"Expected boolean `{name}` to have shape ({n},) but got shape {array.shape}."
            )
        array = np.flatnonzero(array)
    elif not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"Expected `{name}` to be a boolean mask or integer indices but got dtype {array.dtype}."
        )
    if array.size == 0:
        raise ValueError(f"Expected `{name}` to select at least one probe input but it selects none.")
    if array.min() < -n or array.max() >= n:
        raise ValueError(f"Expected `{name}` indices in [0, {n}) but got {array.min()}..{array.max()}.")
    return np.unique(np.mod(array, n))


def check_label(value: Any, name: str, num_classes: int) -> int:
    """Return ``value`` as an int if it is a class label in [0, num_classes)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not 0 <= value < num_classes
    ):
        raise ValueError(f"Expected `{name}` to be an integer in [0, {num_classes}) but got {value!r}.")
    return int(value)


def check_positive_number(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not (np.isfinite(value) and value > 0)
    ):
        raise ValueError(f"Expected `{name}` to be a positive number but got {value!r}.")
    return float(value)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"Expected `{name}` to be an integer >= {minimum} but got {value!r}.")
    return int(value)


#: ``package.module:attribute`` (the attribute may be dotted): how a config names a user's own code.
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def import_object(path: str, argument: str) -> Any:
    """The object an import path ``"package.module:attribute"`` names (see :data:`IMPORT_PATH`): the
    module is found on ``sys.path``, to which the working directory is added (last) if it is missing.

    Args:
        path: the import path, as the user wrote it.
        argument: the config key or argument it came from, for errors.

    Raises:
        ValueError: naming ``argument``, when the module cannot be imported
            (whatever it raised on import is quoted) or has no such attribute.
    """
    module_name, _, attribute = path.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:  # the `freqlens` script, unlike `python -m`,
        sys.path.append(os.getcwd())  # has no working directory on sys.path
    try:
        target = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - a user's module may raise anything on import
        raise ValueError(f"Expected `{argument}` {path!r} to name an importable module but {module_name!r} "
                         f"cannot be imported ({type(error).__name__}: {error}).") from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"Expected `{argument}` {path!r} to name an attribute of module {module_name!r} "
                             f"but it has no {attribute!r}.")
        target = getattr(target, part)
    return target
