"""Gradient alignment (GA): train along the gradient of a clean reference set.

Each optimisation step (METHOD.md section 3), per parameter tensor, the
training gradient g is replaced by its projection on the reference gradient
g_c, kept pointing along g_c::

    g_a = |<g, g_c>| / ||g_c||^2 * g_c

Pure g_a is used while the reference loss is above ``loss_threshold`` and the
mean reference-gradient norm above ``norm_threshold``; afterwards, from epoch
``mix_from_epoch`` on, ``(1 - mu) g_a + mu g`` with mu rising linearly to
``mu`` at the last epoch. Alignment runs after the gradients of a step are
complete (after all accumulation micro-batches) and before clipping.

Two choices differ from the paper's code, both because its runs crashed or
could crash (METHOD.md pitfalls):

- the mean reference-gradient norm is the mean over all parameter tensors,
  so a memorised reference set (all g_c = 0) gives 0, not a mean over nothing;
- a tensor whose g_c is zero gets g_a = 0 (no step along an undefined direction).

Use it from freqlens' loop (:func:`freqlens.training.train` takes
``aligner=``) or in a Hugging Face ``Trainer`` through :class:`AlignedTrainerMixin`.

Under data-parallel training the training gradients are already averaged
across processes when alignment runs; every process draws the same reference
batch (the same seed), computes the gradient on its contiguous share of it,
and one all-reduce makes the full batch's mean gradient and loss, so every
process applies the same aligned gradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from freqlens import distributed
from freqlens._checks import check_positive_int
from freqlens.models import compute_autocast, model_device, trim_padding

BRANCHES = ("pure", "mixed")


@dataclass(frozen=True)
class GAConfig:
    """Settings of gradient alignment (the paper's defaults); the meaning of each is its comment.

    ``subspace`` = m > 1 cuts the reference batch into m groups and projects
    the training gradient on the span of their m gradients (see
    :func:`project_on_span`). Errors name a field as ``KEY + name``: the bare
    field here, ``defense.ga.<name>`` in :class:`GASettings` (the config's
    ``[defense.ga]`` table).
    """

    KEY: ClassVar[str] = ""  # how errors name the fields (a prefix)

    loss_threshold: float = 0.4  # pure alignment while the reference loss is above this ...
    norm_threshold: float = 5e-7  # ... and the mean reference-gradient norm above this
    mu: float = 0.1  # the weight of the raw gradient, reached at the last epoch, in [0, 1]
    mix_from_epoch: int = 1  # the first epoch (0-based) that may mix the raw gradient in
    pure: bool = False  # pure alignment throughout (the paper's LLM setting)
    batch_size: int | None = None  # reference examples per reference gradient (None: the training batch)
    subspace: int = 1  # reference gradients spanning each tensor's projection (1: the paper's rule)

    def __post_init__(self) -> None:
        key = self.KEY
        for name in ("loss_threshold", "norm_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"Expected `{key}{name}` >= 0 but got {value!r}.")
        if not (isinstance(self.mu, (int, float)) and 0.0 <= self.mu <= 1.0):
            raise ValueError(f"Expected `{key}mu` in [0, 1] but got {self.mu!r}.")
        if not isinstance(self.pure, bool):
            raise ValueError(f"Expected `{key}pure` to be true or false but got {self.pure!r}.")
        check_positive_int(self.mix_from_epoch, f"{key}mix_from_epoch", minimum=0)
        if self.batch_size is not None:
            check_positive_int(self.batch_size, f"{key}batch_size")
        check_positive_int(self.subspace, f"{key}subspace")
        if self.batch_size is not None and self.subspace > self.batch_size:
            raise ValueError(f"Expected `{key}subspace` <= `{key}batch_size` ({self.batch_size}) but got "
                             f"{self.subspace}.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GASettings(GAConfig):
    """:class:`GAConfig` as the config's ``[defense.ga]`` table: errors name ``defense.ga.<key>``."""

    KEY: ClassVar[str] = "defense.ga."


@dataclass
class AlignStep:
    """What one alignment did."""

    branch: str  # "pure" or "mixed"
    cosine: float  # cosine between the whole training and reference gradients
    reference_loss: float
    mean_reference_norm: float
    mu: float  # the raw gradient's weight (0 when pure)


@dataclass
class AlignLog:
    """Per-step alignment records, as columns."""

    steps: list[AlignStep] = field(default_factory=list)

    def to_dict(self) -> dict[str, list]:
        keys = ("branch", "cosine", "reference_loss", "mean_reference_norm", "mu")
        return {k: [getattr(s, k) for s in self.steps] for k in keys}


def mixing_weight(config: GAConfig, epoch: int, epochs: int) -> float:
    """mu at 0-based ``epoch`` of ``epochs``: 0 before ``mix_from_epoch``, then
    rising linearly to ``config.mu`` at the last epoch."""
    first = config.mix_from_epoch
    if config.pure or epoch < first or epochs - first <= 0:
        return 0.0
    return config.mu * min(1.0, (epoch - first + 1) / (epochs - first))


def align_gradients(
    train_grads: list[torch.Tensor | None],
    reference_grads: list[torch.Tensor | None],
    mu: float,
) -> list[torch.Tensor | None]:
    """Per tensor: ``(1 - mu) |<g, g_c>| / ||g_c||^2 g_c + mu g`` (``g_a = 0`` where ``g_c = 0``).

    The plain statement of the rule, one tensor at a time;
    :meth:`GradientAligner.align` computes the same without host round trips.

    A missing training gradient counts as zero; a missing reference gradient
    too. Returns new tensors (the inputs are not changed).
    """
    out: list[torch.Tensor | None] = []
    for g, gc in zip(train_grads, reference_grads):
        if g is None and gc is None:
            out.append(None)
            continue
        if gc is None:
            out.append(mu * g)
            continue
        if g is None:
            out.append(torch.zeros_like(gc))
            continue
        squared = torch.sum(gc.double() * gc.double())
        coefficient = torch.where(squared > 0, torch.abs(torch.sum(g.double() * gc.double())) / squared,
                                  torch.zeros_like(squared))
        aligned = gc * coefficient.to(gc.dtype)
        out.append(aligned if mu == 0 else (1.0 - mu) * aligned + mu * g)
    return out


SPAN_RTOL = 1e-6  # singular values of the reference Gram matrix below this share of the largest count as zero


def project_on_span(
    train_grad: torch.Tensor,
    group_grads: list[torch.Tensor],
    weights: list[float] | None = None,
) -> torch.Tensor:
    """One tensor's gradient projected on the span of m reference gradients, kept descending.

    The plain statement of the rule behind ``GAConfig.subspace`` (float64
    throughout); :meth:`GradientAligner.align` computes the same for all
    tensors at once. With the groups' gradients g_1..g_m as the rows of S,
    their mean g_c = sum_j w_j g_j (``weights`` w: the groups' shares of the
    reference batch, equal by default) and the Gram matrix G = S S^T::

        a = G^+ S g                   (least squares: P g = a^T S is the projection)
        if <P g, g_c> < 0:            (it would raise the reference loss)
            a = a - 2 <P g, g_c> / ||g_c||^2 w

    The second line reflects the component along g_c, as the paper's
    ``|<g, g_c>|`` does: for m = 1 the rule is exactly
    ``|<g, g_c>| / ||g_c||^2 g_c``. G^+ is the pseudo-inverse (groups whose
    gradients are linearly dependent, or zero, are handled); a tensor whose
    reference gradients are all zero gets zero.
    """
    m = len(group_grads)
    if m == 0:
        raise ValueError("Expected at least one reference gradient but got none.")
    w = torch.full((m,), 1.0 / m, dtype=torch.float64) if weights is None else torch.as_tensor(
        weights, dtype=torch.float64)
    rows = torch.stack([g.detach().double().reshape(-1) for g in group_grads])
    gram = rows @ rows.T
    a = torch.linalg.pinv(gram, hermitian=True, rtol=SPAN_RTOL) @ (rows @ train_grad.detach().double().reshape(-1))
    along, mean_sq = a @ gram @ w, w @ gram @ w
    if along < 0 and mean_sq > 0:
        a = a - 2 * along / mean_sq * w
    return (a @ rows).reshape(train_grad.shape).to(train_grad.dtype)



class GradientAligner:
    """Replaces a model's gradients by their alignment with a clean reference set.

    Args:
        model: the model being trained.
        encodings, labels: the clean reference set (pre-tokenised).
        config: GA settings.
        batch_size: reference examples per step when ``config.batch_size`` is None
            (freqlens uses the examples per optimisation step, i.e. the
            training batch size times the accumulation steps).
        micro_batch_size: reference rows per forward pass (default: all of
            them at once); under gradient accumulation, the training batch size.
        seed: seed of the order in which reference batches are cycled.

    After the gradients of a step are in ``p.grad``, call :meth:`align`; it
    runs one forward/backward pass on the next reference batch and writes the
    aligned gradients back.

    Under data-parallel training every process makes its own aligner with the
    same arguments (the same seed, so the same reference batches) and calls
    :meth:`align` at every step (a collective) on gradients that are already
    synchronised (``DistributedDataParallel`` averages them in backward;
    :func:`freqlens.training.train` does it itself). Each process takes its
    contiguous share of the reference batch and the shares' gradients and
    losses are averaged in one all-reduce: every process ends with the same
    aligned gradients, equal to a single process's up to float rounding. A
    ``DistributedDataParallel`` model may be given; the reference forward runs
    on the module inside it (its gradient hooks must not fire for it).
    """

    def __init__(self, model: nn.Module, encodings: Mapping[str, torch.Tensor], labels, config: GAConfig | None = None,
                 *, batch_size: int = 32, micro_batch_size: int | None = None, seed: int = 0) -> None:
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"Expected a non-empty clean reference set but got {len(labels)} labels.")
        self.model = model
        self.config = config or GAConfig()
        self.encodings = dict(encodings)
        self.labels = labels
        self.batch_size = min(self.config.batch_size or check_positive_int(batch_size, "batch_size"), len(labels))
        self.micro_batch_size = self.batch_size if micro_batch_size is None else check_positive_int(
            micro_batch_size, "micro_batch_size")
        if self.config.subspace > self.batch_size:
            raise ValueError(f"Expected `{self.config.KEY}subspace` <= the reference batch ({self.batch_size} "
                             f"examples) but got {self.config.subspace}.")
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.randperm(len(labels), generator=self._generator)
        self._position = 0
        self.log = AlignLog()

    def state_dict(self) -> dict:
        """What a resumed run needs to go on as this aligner would: the reference
        batches' generator, order and position, and the alignment log."""
        return {"generator": self._generator.get_state(), "order": self._order.clone(),
                "position": int(self._position), "log": [asdict(step) for step in self.log.steps]}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict` (a training checkpoint's)."""
        self._generator.set_state(state["generator"])
        self._order, self._position = state["order"].clone(), int(state["position"])
        self.log = AlignLog([AlignStep(**step) for step in state["log"]])

    def _next_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self._position + self.batch_size > len(self.labels):
            self._order = torch.randperm(len(self.labels), generator=self._generator)
            self._position = 0
        rows = self._order[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        return trim_padding({k: v[rows] for k, v in self.encodings.items()}), self.labels[rows]

    def reference_gradients(self, parameters: list[nn.Parameter]) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        """Gradients of the mean reference loss on the next reference batch (p.grad untouched),
        computed in chunks of ``micro_batch_size`` rows (the same numbers, less memory), and
        the loss as a 0-d tensor on the model's device (no host copy).

        Under data-parallel training each process computes its share of the batch,
        weighted by ``world * share / batch``, and the average across processes (one
        all-reduce, a collective) is the whole batch's mean on every process."""
        batch, labels = self._next_batch()
        return self._gradients(batch, labels, parameters)

    def reference_group_gradients(
        self, parameters: list[nn.Parameter],
    ) -> tuple[list[list[torch.Tensor | None]], list[float], torch.Tensor]:
        """The next reference batch cut into ``config.subspace`` groups (sizes differing by at
        most one): each group's mean-loss gradients, the groups' shares of the batch, and the
        batch's mean loss (0-d, on the model's device)."""
        batch, labels = self._next_batch()
        parts = torch.arange(len(labels)).tensor_split(self.config.subspace)
        groups, shares, loss = [], [], None
        for rows in parts:
            grads, part_loss = self._gradients({k: v[rows] for k, v in batch.items()}, labels[rows], parameters)
            share = len(rows) / len(labels)
            groups.append(grads)
            shares.append(share)
            loss = part_loss * share if loss is None else loss + part_loss * share
        return groups, shares, loss

    def _gradients(self, batch: Mapping[str, torch.Tensor], labels: torch.Tensor,
                   parameters: list[nn.Parameter]) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        model, n = distributed.unwrap(self.model), len(labels)
        world = distributed.world_size() if distributed.is_distributed() else 1
        if world > 1:
            mine = distributed.shard(n)
            batch, labels = {k: v[mine] for k, v in batch.items()}, labels[mine]
        device = model_device(model)
        total: list[torch.Tensor | None] = [None] * len(parameters)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        autocast = compute_autocast(model, unscaled_gradients=True)  # float16: reference gradients in float32
        for start in range(0, len(labels), self.micro_batch_size):
            part = {k: v[start : start + self.micro_batch_size] for k, v in batch.items()}
            part_labels = labels[start : start + self.micro_batch_size]
            weight = world * len(part_labels) / n
            with autocast:
                loss = model(**{k: v.to(device) for k, v in trim_padding(part).items()},
                             labels=part_labels.to(device)).loss
            grads = torch.autograd.grad(loss * weight, parameters, allow_unused=True)
            total = [g if t is None else (t if g is None else t + g) for t, g in zip(total, grads)]
            loss_sum = loss_sum + loss.detach().double() * weight
        if world > 1:
            total, (loss_sum,) = distributed.all_reduce_gradients(total, parameters, loss_sum)
        return total, loss_sum

    def align(self, *, epoch: int, epochs: int, parameters: list[nn.Parameter] | None = None) -> AlignStep:
        """Align the gradients now in ``p.grad`` (0-based ``epoch`` of ``epochs``).

        Everything stays on the model's device; per-tensor dot products and
        norms are accumulated in float64, and one small tensor (the loss, the
        mean norm and the cosine's terms) crosses to the host per step, to
        choose the branch.
        """
        if parameters is None:
            parameters = [p for p in self.model.parameters() if p.requires_grad]
        if self.config.subspace > 1:
            return self._align_on_span(epoch=epoch, epochs=epochs, parameters=parameters)
        reference, loss = self.reference_gradients(parameters)
        train_grads = [p.grad for p in parameters]
        zero = torch.zeros((), dtype=torch.float64, device=loss.device)
        squared = torch.stack([torch.sum(r * r, dtype=torch.float64) if r is not None else zero for r in reference])
        dots = torch.stack([torch.sum(g * r, dtype=torch.float64) if g is not None and r is not None else zero
                            for g, r in zip(train_grads, reference)])
        train_squared = sum((torch.sum(g * g, dtype=torch.float64) for g in train_grads if g is not None), zero)
        step = self._decide(loss, squared, dots, train_squared, epoch=epoch, epochs=epochs)
        coefficients = torch.where(squared > 0, dots.abs() / torch.where(squared > 0, squared, 1.0), 0.0)
        aligned = (None if r is None else r * k.to(r.dtype) for r, k in zip(reference, coefficients.unbind()))
        _write_gradients(parameters, train_grads, aligned, step.mu)
        return step

    def _decide(self, loss: torch.Tensor, squared: torch.Tensor, dots: torch.Tensor, train_squared: torch.Tensor,
                *, epoch: int, epochs: int) -> AlignStep:
        """Choose the branch from the per-tensor ||g_c||^2 (``squared``) and <g, g_c> (``dots``)
        and the whole ||g||^2; one small tensor crosses to the host. Logs and returns the step."""
        zero = torch.zeros((), dtype=torch.float64, device=loss.device)
        summary = torch.stack([loss.double(), torch.sqrt(squared).mean() if len(squared) else zero, dots.sum(),
                               train_squared, squared.sum()]).tolist()
        loss_value, mean_norm, dot, train_sq, ref_sq = summary
        if not (math.isfinite(loss_value) and math.isfinite(ref_sq)):
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            value = loss_value if what == "loss" else math.sqrt(ref_sq)  # a sum of squares: inf or NaN
            raise FloatingPointError(
                f"The clean reference batch's {what} is {value} at gradient-alignment step "
                f"{len(self.log.steps) + 1} (epoch {epoch + 1}); training stopped there, before the "
                f"update. Likely cause: the model gives NaN/inf on the reference examples (their "
                f"inputs, or weights that are already non-finite), or a float16 overflow "
                f"(`model.dtype` = 'float16')."
            )
        c = self.config
        learning = loss_value > c.loss_threshold and mean_norm > c.norm_threshold
        mu = 0.0 if learning else mixing_weight(c, epoch, epochs)
        cosine = dot / math.sqrt(train_sq * ref_sq) if train_sq > 0 and ref_sq > 0 else 0.0
        step = AlignStep(branch="mixed" if mu > 0 else "pure", cosine=cosine, reference_loss=loss_value,
                         mean_reference_norm=mean_norm, mu=mu)
        self.log.steps.append(step)
        return step

    def _align_on_span(self, *, epoch: int, epochs: int, parameters: list[nn.Parameter]) -> AlignStep:
        """:func:`project_on_span` for every tensor at once.

        Per tensor, the m group gradients and the training gradient are stacked as
        the rows of one matrix whose Gram matrix (float64, built over column
        chunks) holds every dot product the rule needs; the P systems are solved
        in one batched pseudo-inverse and each projection is one (1 x m) @ (m x n)
        product. One small tensor crosses to the host per step, as in :meth:`align`.
        """
        groups, shares, loss = self.reference_group_gradients(parameters)
        m = len(groups)
        train_grads = [p.grad for p in parameters]
        stacks: list[torch.Tensor | None] = []
        grams = []
        for i, (p, g) in enumerate(zip(parameters, train_grads)):
            rows = [group[i] for group in groups]
            if all(r is None for r in rows):
                stacks.append(None)
                grams.append(torch.zeros((m + 1, m + 1), dtype=torch.float64, device=loss.device))
                continue
            flat = [(torch.zeros_like(p) if r is None else r).reshape(-1) for r in rows]
            stack = torch.stack([*flat, (torch.zeros_like(p) if g is None else g).reshape(-1)])
            stacks.append(stack)
            grams.append(_gram64(stack))
        full = torch.stack(grams)  # (P, m + 1, m + 1): the groups' Gram matrix, then the training gradient
        gram, dot, train_sq = full[:, :m, :m], full[:, :m, m], full[:, m, m]
        w = torch.tensor(shares, dtype=torch.float64, device=full.device)
        coefficients = (torch.linalg.pinv(gram, hermitian=True, rtol=SPAN_RTOL) @ dot.unsqueeze(-1)).squeeze(-1)
        gram_w = gram @ w  # (P, m): <g_j, g_c> per tensor
        along, mean_sq = (coefficients * gram_w).sum(-1), gram_w @ w  # <P g, g_c>, ||g_c||^2
        flip = (along < 0) & (mean_sq > 0)
        coefficients = torch.where(flip.unsqueeze(-1), coefficients - (2 * along / torch.where(
            mean_sq > 0, mean_sq, 1.0)).unsqueeze(-1) * w, coefficients)
        step = self._decide(loss, mean_sq, dot @ w, train_sq.sum(), epoch=epoch, epochs=epochs)
        aligned = (None if stack is None else (k.to(stack.dtype) @ stack[:m]).reshape(p.shape)
                   for p, stack, k in zip(parameters, stacks, coefficients.unbind()))
        _write_gradients(parameters, train_grads, aligned, step.mu)
        return step


def _write_gradients(parameters: list[nn.Parameter], train_grads: list[torch.Tensor | None], aligned, mu: float) -> None:
    """``p.grad = (1 - mu) g_a + mu g`` per tensor (``g_a`` fresh, changed in place); where there
    is no reference gradient (``g_a`` None), ``mu g``."""
    for p, g, a in zip(parameters, train_grads, aligned):
        if a is None:
            p.grad = None if g is None else mu * g
        else:
            p.grad = a if mu == 0 or g is None else a.mul_(1.0 - mu).add_(g, alpha=mu)


GRAM_CHUNK = 1 << 20  # columns per float64 block of _gram64 (8 MiB a row)


def _gram64(rows: torch.Tensor) -> torch.Tensor:
    """``rows @ rows.T`` accumulated in float64 over column blocks (a float64 copy of a block,
    never of the whole matrix)."""
    total = torch.zeros((rows.shape[0], rows.shape[0]), dtype=torch.float64, device=rows.device)
    for start in range(0, rows.shape[1], GRAM_CHUNK):
        block = rows[:, start : start + GRAM_CHUNK].double()
        total += block @ block.T
    return total


class AlignedTrainerMixin:
    """Gradient alignment for a Hugging Face ``Trainer`` (a callback cannot change gradients).

    Mix it in before ``Trainer`` and give it an aligner::

        class AlignedTrainer(AlignedTrainerMixin, Trainer):
            pass

        trainer = AlignedTrainer(model=model, args=args, train_dataset=data, aligner=aligner)

    Alignment runs once per optimisation step, after gradient accumulation and
    before clipping (it hooks the Trainer's gradient-norm step, which the
    Trainer calls exactly there).

    Under data-parallel training (``torchrun`` / ``accelerate launch`` with the
    Trainer's ``DistributedDataParallel``) that point comes after the step's
    last backward pass, which ran outside ``no_sync`` (``sync_gradients``
    true), so ``p.grad`` holds the gradients averaged across processes; the
    aligner then synchronises the reference gradients (see
    :class:`GradientAligner`), and every process applies the same update.
    """

    def __init__(self, *args, aligner: GradientAligner, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.aligner = aligner
        self._aligned_at: int | None = None

    def _align_once(self) -> None:
        step = self.state.global_step
        if self._aligned_at == step:
            return
        self._aligned_at = step
        epoch = int(math.floor(self.state.epoch or 0.0))
        epochs = int(math.ceil(self.args.num_train_epochs))
        self.aligner.align(epoch=min(epoch, epochs - 1), epochs=epochs)

    def _clip_grad_norm(self, model):
        self._align_once()
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        self._align_once()
        return super()._get_grad_norm(model, grad_norm=grad_norm)
