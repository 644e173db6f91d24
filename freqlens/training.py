"""One honest training loop: AdamW, a linear schedule, the recorder stepped each step."""

from __future__ import annotations

import inspect
import math
import random
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from freqlens import checkpoint as checkpoints
from freqlens import distributed
from freqlens._checks import check_positive_int, check_positive_number
from freqlens.models import check_master_weights, compute_autocast, compute_dtype, model_device, trim_padding


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


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (the start of every ``freqlens run``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    checkpoint=None,
) -> TrainResult:
    """Fine-tune ``model`` on pre-tokenised examples, stepping ``recorder`` each step.

    Each optimisation step averages the loss over ``config.accumulation_steps``
    batches (weighted by their sizes, so it equals one big batch), then applies
    gradient alignment (``aligner``), clipping and the AdamW update.

    The weights train in float32 (half-precision trainable weights are
    refused: AdamW's updates would round away); a compute dtype set by
    :func:`freqlens.models.set_compute_dtype` (``model.dtype`` in a config)
    runs each forward pass under ``torch.autocast``, with the loss scaled
    for float16 (a step whose scaled gradients overflow is skipped and the
    scale halved, as ``torch.amp.GradScaler`` does).

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
            batch) instead of the model's own loss. A ``loss_fn`` that
            takes a keyword argument ``rows`` also gets the batch's row
            indices into ``encodings`` (a LongTensor; under data-parallel
            training this process's share), e.g. to log per-example losses
            from the training forward passes (:mod:`freqlens.defenses.filtering`).
        step_offset: steps already taken in an earlier phase of the same run
            (the recorder sees steps ``step_offset + 1, ...``).
        checkpoint: a :class:`freqlens.checkpoint.Checkpoint`: at the end of
            every epoch the training state is saved into it (trainable
            weights and buffers, optimiser, learning-rate schedule, loss
            scaler, random states including the shuffling generator, epoch
            index, losses, selection state, the aligner's state); when it
            holds a state saved by this phase (same ``step_offset``), training
            restores it and continues with the next epoch, exactly as the
            uninterrupted run would (same steps, same random draws; the
            recorder, built with ``resume=True``, continues at the restored
            global step). Under data-parallel training rank 0 writes it.

    Returns:
        A :class:`TrainResult`.

    Raises:
        FloatingPointError: at the first step whose loss or gradient norm is
            not finite (NaN or inf), naming the step and the likely cause
            (float16 overflow, a learning rate too high); the step is not
            applied.
        ValueError: if there are no examples, no trainable parameters, or
            trainable parameters in bfloat16/float16; a checkpoint state
            written by another run (epochs, steps, examples, trainable
            parameters or frozen weights differ).
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
    check_master_weights(model)
    precision = compute_dtype(model)
    autocast = compute_autocast(model)  # made once, entered for every forward pass
    # float16 compute: scale the loss so that small gradients survive (torch's recipe for autocast)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
    loss_fn = loss_fn or _model_loss
    wants_rows = _takes_rows(loss_fn)
    generator = torch.Generator().manual_seed(config.seed)
    result = TrainResult(steps=0)
    best_state, best_score = None, -math.inf
    first_epoch = 0
    saved = checkpoint.train_state(step_offset) if checkpoint is not None else None
    frozen = checkpoints.frozen_fingerprint(model) if checkpoint is not None else None
    if saved is not None:  # resume: the state at the end of epoch `first_epoch`
        shape = {"epochs": config.epochs, "total": total, "examples": n}
        if {k: int(saved[k]) for k in shape} != shape:
            raise ValueError(f"Expected the checkpoint to come from a run with {shape} but it has "
                             f"{ {k: int(saved[k]) for k in shape} }: it cannot be continued.")
        checkpoints.check_frozen(model, saved["frozen"])
        checkpoints.load_trainable_state(model, saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        scaler.load_state_dict(saved["scaler"])
        generator.set_state(saved["generator"])
        if aligner is not None:
            aligner.load_state_dict(saved["aligner"])
        done = saved["result"]
        result = TrainResult(steps=int(done["steps"]), losses=list(done["losses"]), seconds=float(done["seconds"]),
                             recording_seconds=float(done["recording_seconds"]),
                             epoch_scores=list(done["epoch_scores"]), best_epoch=done["best_epoch"])
        best_state, best_score, first_epoch = saved["best_state"], float(saved["best_score"]), int(saved["epoch"])
        if recorder is not None:
            recorder.seconds = float(saved["recorder_seconds"])
    began = time.perf_counter() - result.seconds
    recorded_before = recorder.seconds - result.recording_seconds if recorder is not None else 0.0
    if recorder is not None and not recorder.started:
        recorder.start(model, total_steps=total, step=step_offset + result.steps if saved is not None else 0,
                       epoch=float(first_epoch))
    if saved is not None:  # last: nothing above may draw from them
        checkpoints.set_random_states(saved["random"])
    step_rows = config.batch_size * config.accumulation_steps
    bar = tqdm(total=total, initial=result.steps, desc="training", unit="step",
               disable=not progress or not distributed.is_main(), leave=False)
    model.train()
    for epoch in range(first_epoch, config.epochs):
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
                with autocast:
                    loss = (loss_fn(model, batch, labels[rows].to(device), rows=rows) if wants_rows
                            else loss_fn(model, batch, labels[rows].to(device)))
                weight = world * len(rows) / len(rows_of_step)
                scaler.scale(loss * weight).backward()
                step_loss += float(loss.detach()) * weight
            if world > 1:  # one all-reduce: the step's mean gradients and loss on every process
                grads, (mean_loss,) = distributed.all_reduce_gradients(
                    [p.grad for p in parameters], parameters, torch.tensor(step_loss))
                for p, g in zip(parameters, grads):
                    p.grad = g
                step_loss = float(mean_loss)
            step = step_offset + result.steps + 1
            if not math.isfinite(step_loss):
                raise FloatingPointError(_non_finite_message("training loss", step_loss, step, epoch, config.lr,
                                                             precision))
            if scaler.is_enabled() and not _step_gradients_finite(scaler, optimizer, parameters):
                # a loss-scale overflow: the scaler skips the step and halves the scale; a scale
                # below 1 means the gradients overflow unscaled, in float16 itself
                scaler.update()
                if scaler.get_scale() < 1.0:
                    raise FloatingPointError(_non_finite_message("gradient", math.nan, step, epoch, config.lr,
                                                                 precision))
                with warnings.catch_warnings():  # the skipped optimiser step is intended
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                            category=UserWarning)
                    schedule.step()
            else:
                if aligner is not None:
                    aligner.align(epoch=epoch, epochs=config.epochs, parameters=parameters)
                grads = [p.grad for p in parameters if p.grad is not None]
                norm = (nn.utils.clip_grad_norm_(parameters, config.max_grad_norm) if config.max_grad_norm > 0
                        else nn.utils.get_total_norm(grads) if grads else torch.zeros(()))
                if not math.isfinite(float(norm)):
                    raise FloatingPointError(_non_finite_message(
                        "gradient norm" + (" after gradient alignment" if aligner is not None else ""),
                        float(norm), step, epoch, config.lr, precision))
                scaler.step(optimizer)
                scaler.update()
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
        if checkpoint is not None and distributed.is_main():
            checkpoint.save({
                "step_offset": step_offset, "epochs": config.epochs, "total": total, "examples": n,
                "epoch": epoch + 1, "model": checkpoints.trainable_state(model), "frozen": frozen,
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(), "generator": generator.get_state(),
                "random": checkpoints.random_states(),
                "aligner": aligner.state_dict() if aligner is not None else None,
                "result": {"steps": result.steps, "losses": list(result.losses),
                           "seconds": time.perf_counter() - began,
                           "recording_seconds": recorder.seconds - recorded_before if recorder is not None else 0.0,
                           "epoch_scores": list(result.epoch_scores), "best_epoch": result.best_epoch},
                "best_state": best_state, "best_score": best_score,
                "recorder_seconds": recorder.seconds if recorder is not None else 0.0,
            })
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


def _step_gradients_finite(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer,
                           parameters: list[nn.Parameter]) -> bool:
    """Unscale the step's gradients (float16 loss scaling) and say whether all are finite."""
    scaler.unscale_(optimizer)
    grads = [p.grad for p in parameters if p.grad is not None]
    return not grads or math.isfinite(float(nn.utils.get_total_norm(grads)))


def _non_finite_message(what: str, value: float, step: int, epoch: int, lr: float,
                        precision: torch.dtype | None) -> str:
    causes = []
    if precision == torch.float16:
        causes.append("float16 overflow (`model.dtype` = 'float16' holds values up to 65504; "
                      "use 'bfloat16' or 'float32')")
    causes.append(f"a learning rate too high ({lr:g}: `train.lr`, or the defense's own rate)")
    causes.append("a loss function or inputs that give NaN/inf")
    return (f"The {what} is {value} at step {step} (epoch {epoch + 1}); training stopped there. "
            f"Likely cause: {'; or '.join(causes)}.")


def _takes_rows(loss_fn: Callable) -> bool:
    """Whether ``loss_fn`` accepts a ``rows`` keyword (the batch's row indices)."""
    try:
        parameters = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return "rows" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _model_loss(model: nn.Module, batch: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    return model(**batch, labels=labels).loss
