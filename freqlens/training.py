"""One honest training loop: AdamW, a linear schedule, the recorder stepped each step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from freqlens import distributed
from freqlens._checks import check_positive_int, check_positive_number
from freqlens.models import model_device, trim_padding


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the paper's: AdamW, linear decay, no warm-up)."""

    epochs: int = 3  # passes over the training set
    batch_size: int = 32  # examples per forward pass (an optimisation step takes accumulation_steps of them)
    lr: float = 2e-5  # peak learning rate of AdamW
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (the paper: 1); 0 disables it
    seed: int = 0  # seed of the shuffling (freqlens run and the demo also seed the model and data with it)
    accumulation_steps: int = 1  # batches of batch_size whose gradients make one optimisation step

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_number(self.lr, "lr")
        check_positive_int(self.accumulation_steps, "accumulation_steps")


@dataclass
class TrainResult:
    """What a training run measured."""

    steps: int  # optimisation steps taken
    losses: list[float] = field(default_factory=list)  # training loss per step
    seconds: float = 0.0  # wall time, recording included
    recording_seconds: float = 0.0  # of which recording
    epoch_scores: list[float] = field(default_factory=list)  # the selector's score after each epoch
    best_epoch: int | None = None  # the epoch (1-based) whose weights were kept, when selecting
    alignment: dict | None = None  # per-step gradient-alignment log (branch, cosine, ...)


def steps_per_epoch(num_examples: int, batch_size: int, accumulation_steps: int = 1) -> int:
    """Optimisation steps in one epoch (the last batch and step may be smaller)."""
    return math.ceil(math.ceil(num_examples / batch_size) / accumulation_steps)


def train(
    model: nn.Module,
    encodings: Mapping[str, torch.Tensor],
    labels: torch.Tensor | np.ndarray,
    config: TrainConfig | None = None,
    *,
    recorder=None,
    progress: bool = True,
    aligner=None,
    selector: Callable[[nn.Module], float] | None = None,
    loss_fn: Callable | None = None,
    step_offset: int = 0,
) -> TrainResult:
    """Fine-tune ``model`` on pre-tokenised examples, stepping ``recorder`` each step.

    Each optimisation step averages the loss over ``config.accumulation_steps``
    batches (weighted by their sizes, so it equals one big batch), then applies
    gradient alignment (``aligner``), clipping and the AdamW update.

    Under data-parallel training (``torchrun``, ``accelerate launch``; every
    process calls ``train`` with the same arguments) every process starts from
    rank 0's weights (one broadcast), takes its contiguous share of each
    batch, weighted so that the average across processes is the batch mean,
    and the gradients and the step loss are averaged in one all-reduce per
    optimisation step, before alignment and clipping: the run takes the steps
    of a single process with the same seed, up to float rounding (without
    dropout; with it each process draws its own masks). Pass the plain model:
    a ``DistributedDataParallel`` wrapper is unwrapped (this loop synchronises
    itself). The recorder and the aligner are called on every process; the
    selector too, and rank 0's score decides.

    Args:
        model: a classifier whose forward takes ``**encodings, labels=`` and
            returns an object with ``.loss`` (a Hugging Face model). Only
            parameters with ``requires_grad`` are trained.
        encodings: model inputs, each a tensor with one row per example.
        labels: training labels, shape (N,).
        config: optimisation settings.
        recorder: a :class:`~freqlens.Recorder`; started here if not yet
            started, stepped after every optimisation step, not closed.
        progress: show a progress bar.
        aligner: a :class:`~freqlens.defenses.GradientAligner`, applied to
            the complete gradients of each step, before clipping.
        selector: a score of the model (e.g. clean dev accuracy), evaluated
            after each epoch; the weights of the best epoch are restored at
            the end (the paper's checkpoint selection for defended runs).
        loss_fn: ``loss_fn(model, batch, labels) -> loss`` (mean over the
            batch) instead of the model's own loss.
        step_offset: steps already taken in an earlier phase of the same run
            (the recorder sees steps ``step_offset + 1, ...``).

    Returns:
        A :class:`TrainResult`.
    """
    config = config or TrainConfig()
    labels = torch.as_tensor(labels, dtype=torch.long)
    n = len(labels)
    if n == 0:
        raise ValueError("Expected at least one training example but got none.")
    per_epoch = steps_per_epoch(n, config.batch_size, config.accumulation_steps)
    total = per_epoch * config.epochs
    model = distributed.unwrap(model)
    world = distributed.world_size() if distributed.is_distributed() else 1
    distributed.broadcast_(list(model.parameters()))  # a no-op in a single process
    device = model_device(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f"Expected {type(model).__name__} to have trainable parameters but all are frozen.")
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
    loss_fn = loss_fn or _model_loss
    generator = torch.Generator().manual_seed(config.seed)
    result = TrainResult(steps=0)
    began = time.perf_counter()
    recorded_before = recorder.seconds if recorder is not None else 0.0
    if recorder is not None and not recorder.recorded_steps:
        recorder.start(model, total_steps=total, epoch=0.0)
    best_state, best_score = None, -math.inf
    step_rows = config.batch_size * config.accumulation_steps
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress or not distributed.is_main(),
               leave=False)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, step_rows):
            rows_of_step = order[start : start + step_rows]
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(0, len(rows_of_step), config.batch_size):
                rows = rows_of_step[micro : micro + config.batch_size]
                if world > 1:  # this process's share of the batch
                    rows = rows[distributed.shard(len(rows))]
                    if len(rows) == 0:
                        continue
                batch = trim_padding({k: v[rows] for k, v in encodings.items()})
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = loss_fn(model, batch, labels[rows].to(device))
                weight = world * len(rows) / len(rows_of_step)
                (loss * weight).backward()
                step_loss += float(loss.detach()) * weight
            if world > 1:  # one all-reduce: the step's mean gradients and loss on every process
                grads, (mean_loss,) = distributed.all_reduce_gradients(
                    [p.grad for p in parameters], parameters, torch.tensor(step_loss))
                for p, g in zip(parameters, grads):
                    p.grad = g
                step_loss = float(mean_loss)
            if aligner is not None:
                aligner.align(epoch=epoch, epochs=config.epochs, parameters=parameters)
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            result.steps += 1
            result.losses.append(step_loss)
            if recorder is not None:
                recorder.step(step_offset + result.steps, epoch=epoch + (start + len(rows_of_step)) / n, loss=step_loss)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{step_loss:.3f}")
        if selector is not None:
            score = torch.tensor([float(selector(model))], dtype=torch.float64)
            score = float(distributed.broadcast_([score])[0])  # rank 0's score decides everywhere
            model.train()
            result.epoch_scores.append(score)
            if score > best_score:
                best_score, result.best_epoch = score, epoch + 1
                best_state = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()
                              if p.requires_grad}
    bar.close()
    if best_state is not None and result.best_epoch != config.epochs:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in best_state:
                    p.copy_(best_state[name])
    model.eval()
    result.seconds = time.perf_counter() - began
    if recorder is not None:
        result.recording_seconds = recorder.seconds - recorded_before
    if aligner is not None:
        result.alignment = aligner.log.to_dict()
    return result


def _model_loss(model: nn.Module, batch: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    return model(**batch, labels=labels).loss
