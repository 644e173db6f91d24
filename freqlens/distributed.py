"""Data-parallel helpers: this process's rank, its share of the rows, the collectives freqlens needs.

Under ``torchrun`` or ``accelerate launch`` every process runs the same script
on its own share of the data; ``torch.distributed`` carries the results
between them. Everything here is a no-op (or the identity) in a single
process, so code that calls it runs unchanged without a launcher.

:func:`init_from_environment` joins the launcher's processes (``freqlens run``
calls it); :func:`on_main` lets rank 0 decide what every process must agree on.
Collectives must be called by every process, in the same order: a function
here that communicates says so. Tensors travel on the CPU, except under the
NCCL backend, where they travel on the current CUDA device.
"""

from __future__ import annotations

import atexit
import math
import os
import pickle
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
from torch import nn

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8)
_T = TypeVar("_T")


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return _initialised() and torch.distributed.get_world_size() > 1


def rank() -> int:
    """This process's rank: ``torch.distributed``'s once initialised, before that the
    launcher's ``RANK`` environment variable (``torchrun``, ``accelerate launch``), else 0."""
    return torch.distributed.get_rank() if _initialised() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of processes, read like :func:`rank` (``WORLD_SIZE``; 1 without a launcher)."""
    return torch.distributed.get_world_size() if _initialised() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files."""
    return rank() == 0


def init_from_environment(device: str = "auto", *, argument: str = "model.device",
                          timeout: timedelta | None = None) -> bool:
    """Join the process group a launcher (``torchrun``, ``accelerate launch``) describes in the
    environment, once per process; a no-op without a launcher or when already joined.

    The launcher sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` in every process it starts. With ``WORLD_SIZE`` above 1 and no
    process group yet, this initialises one: NCCL when ``device`` is CUDA (each
    process on ``cuda:LOCAL_RANK``, made the current device, so that ``"auto"``
    and ``"cuda"`` put every process on its own GPU), gloo on the CPU. The group
    is torn down when the process exits (``torch.distributed`` cannot join a new
    group in a process that left one, so it is kept for the process's lifetime:
    a script may run several experiments in it).

    Args:
        device: where the model will run: ``"auto"`` (CUDA when available),
            ``"cpu"``, ``"cuda"``; a device with an index (``"cuda:1"``) is
            refused under a launcher, where every process takes its own GPU.
        argument: the config key ``device`` came from, for error messages.
        timeout: how long a collective waits for the other processes before it
            fails (default: ``torch.distributed``'s, 30 minutes for gloo and
            10 for NCCL). A process that fails makes the launcher stop the
            others at once; the timeout bounds the wait where it cannot.

    Returns:
        Whether this process now takes part in a group of more than one process.

    Raises:
        ValueError: naming ``argument``, with more than one process: a device
            other than ``"auto"``, ``"cpu"`` or ``"cuda"`` (also when the group
            was set up elsewhere), or a CUDA device with fewer GPUs on this
            machine than processes on it (``LOCAL_RANK`` has none).
    """
    if world_size() <= 1:
        return False
    if not isinstance(device, str) or device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"Expected `{argument}` to be 'auto', 'cpu' or 'cuda' under a launcher (every process "
                         f"takes its own GPU, cuda:LOCAL_RANK) but got {device!r}.")
    if _initialised():
        return True
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= count:
            raise ValueError(f"Expected a GPU for every process on this machine with `{argument}` = {device!r} "
                             f"but this is process LOCAL_RANK={local} and the machine has {count}: start at most "
                             f"{count} per machine (--nproc-per-node) or set `{argument}` = 'cpu'.")
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    atexit.register(_leave)
    return is_distributed()


def _leave() -> None:
    if _initialised():
        torch.distributed.destroy_process_group()


def on_main(function: Callable[..., _T], *args, **kwargs) -> _T:
    """Call ``function(*args, **kwargs)`` on rank 0 alone and return its result on every
    process, or raise its error on every process (a collective).

    For what must agree across processes but is measured or read by one
    (a probe plan timed on the model, the state of an output folder): rank 0
    decides and the others follow, so a refusal stops every process alike
    instead of leaving some waiting in a collective. The result and the error
    travel pickled (``torch.distributed.broadcast_object_list``); on rank 0
    they are the originals. An error that cannot be pickled arrives as a
    ``RuntimeError`` with its type and message. In a single process this is
    ``function(*args, **kwargs)``.
    """
    if not is_distributed():
        return function(*args, **kwargs)
    if is_main():
        try:
            result = function(*args, **kwargs)
        except Exception as error:
            _broadcast_object((False, _portable(error)))
            raise
        _broadcast_object((True, result))
        return result
    done, value = _broadcast_object(None)
    if not done:
        raise value
    return value


def _broadcast_object(value):
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _portable(error: Exception) -> Exception:
    """``error`` if it survives pickling, else a RuntimeError saying what it was."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):  # what (un)pickling raises
        return RuntimeError(f"{type(error).__name__}: {error}")


def barrier() -> None:
    """Wait for every process (a collective); a no-op in a single process."""
    if is_distributed():
        torch.distributed.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` or ``DataParallel`` wrapper, else ``model``.

    A forward through the wrapper would run its collectives (buffer broadcast,
    gradient hooks) on every call; passes that differ between processes
    (probe outputs, reference gradients) go through the plain module instead.
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def shard(n: int, *, rank_: int | None = None, world: int | None = None) -> slice:
    """This process's contiguous share of ``n`` rows: the first ``n % world`` ranks
    take one row more, so shares differ by at most one and follow rank order.

    Example:
        >>> [shard(5, rank_=r, world=2) for r in range(2)]
        [slice(0, 3, None), slice(3, 5, None)]
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(int(n), w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def _device() -> torch.device:
    if _initialised() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(rows: torch.Tensor | np.ndarray | None, n_total: int):
    """Gather every process's share of ``n_total`` rows to rank 0, in rank order (a collective).

    Args:
        rows: this process's rows, ``rows[shard(n_total)]`` of the whole; shares
            may differ in length (they are padded to the longest and trimmed).
            A process whose share is empty may pass None.
        n_total: the number of rows of the whole.

    Returns:
        On rank 0 the whole (``n_total`` rows, the type of ``rows``: a numpy
        array or a CPU tensor), elsewhere None. In a single process, ``rows``.
    """
    if not is_distributed():
        if (0 if rows is None else len(rows)) != n_total:
            raise ValueError(f"Expected `rows` to hold all {n_total} rows in a single process but got "
                             f"{0 if rows is None else len(rows)}.")
        return rows
    world, longest = world_size(), math.ceil(n_total / world_size())
    mine, length = shard(n_total), 0 if rows is None else len(rows)
    if n_total < 1 or length != mine.stop - mine.start:
        raise ValueError(f"Expected `rows` to hold rank {rank()}'s share of n_total={n_total} rows "
                         f"({mine.stop - mine.start}, n_total >= 1) but got {length}.")
    is_numpy = not isinstance(rows, torch.Tensor)
    local = None if rows is None else torch.as_tensor(rows).to(_device())
    if n_total < world:  # some shares are empty: rank 0 (never empty) sends the row shape and dtype
        meta = torch.zeros(9, dtype=torch.int64, device=_device())
        if is_main():
            meta[:2] = torch.tensor([_DTYPES.index(local.dtype), local.ndim - 1])
            meta[2 : local.ndim + 1] = torch.tensor(local.shape[1:])
        torch.distributed.broadcast(meta, src=0)
        dtype, shape = _DTYPES[int(meta[0])], tuple(meta[2 : 2 + int(meta[1])].tolist())
    else:
        dtype, shape = local.dtype, tuple(local.shape[1:])
    padded = torch.zeros((longest, *shape), dtype=dtype, device=_device())
    if length:
        padded[:length] = local
    parts = [torch.empty_like(padded) for _ in range(world)] if is_main() else None
    torch.distributed.gather(padded, parts, dst=0)
    if not is_main():
        return None
    counts = [shard(n_total, rank_=r, world=world) for r in range(world)]
    whole = torch.cat([part[: s.stop - s.start] for part, s in zip(parts, counts)]).cpu()
    return whole.numpy() if is_numpy else whole


def _copy_back_(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    """Average ``tensors`` across processes in place (a collective): one all-reduce of one
    flat buffer, of their promoted dtype, on the first one's device. Returns ``tensors``."""
    if not is_distributed() or not tensors:
        return tensors
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    _copy_back_(flat / world_size(), tensors)
    return tensors


def all_reduce_gradients(grads: Sequence[torch.Tensor | None], parameters: Sequence[torch.Tensor],
                         *scalars: torch.Tensor) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
    """Average gradients, and 0-d ``scalars`` such as the loss, across processes (a collective:
    one all-reduce).

    A process without a gradient for a parameter (its share of the batch was
    empty) counts as zero; the result is None only where no process had one.
    The gradients are averaged in place; the scalars come back averaged, in
    the gradients' dtype. In a single process both come back unchanged.
    """
    if not is_distributed():
        return list(grads), list(scalars)
    device = parameters[0].device
    dtype = next((g.dtype for g in grads if g is not None), parameters[0].dtype)
    present = torch.tensor([g is not None for g in grads], dtype=dtype, device=device)
    full = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, parameters)]
    extra = [torch.as_tensor(s).to(device=device, dtype=dtype).reshape(1) for s in scalars]
    all_reduce_mean_([*full, present, *extra])
    return [g if k > 0 else None for g, k in zip(full, present.tolist())], [e[0] for e in extra]


def broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> Sequence[torch.Tensor]:
    """Overwrite ``tensors`` with rank ``src``'s in place (a collective: one broadcast of one
    flat buffer); a no-op in a single process. Returns ``tensors``."""
    if not is_distributed() or not tensors:
        return tensors
    flat = torch.cat([t.detach().reshape(-1) for t in tensors]).to(_device())
    torch.distributed.broadcast(flat, src=src)
    _copy_back_(flat, tensors)
    return tensors
