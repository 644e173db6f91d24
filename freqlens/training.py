"""One honest training loop: AdamW, a linear schedule, the recorder stepped each step."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from freqlens._checks import check_positive_int, check_positive_number
from freqlens.models import model_device, trim_padding


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the paper's: AdamW, linear decay, no warm-up)."""

    epochs: int = 3  # passes over the training set
    batch_size: int = 32  # examples per optimisation step
    lr: float = 2e-5  # peak learning rate of AdamW
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (the paper: 1); 0 disables it
    seed: int = 0  # seed of the shuffling (freqlens run and the demo also seed the model and data with it)

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_number(self.lr, "lr")


@dataclass
class TrainResult:
    """What a training run measured."""

    steps: int  # optimisation steps taken
    losses: list[float] = field(default_factory=list)  # training loss per step
    seconds: float = 0.0  # wall time, recording included
    recording_seconds: float = 0.0  # of which recording


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimisation steps in one epoch (the last batch may be smaller)."""
    return math.ceil(num_examples / batch_size)


def train(
    model: nn.Module,
    encodings: Mapping[str, torch.Tensor],
    labels: torch.Tensor | np.ndarray,
    config: TrainConfig | None = None,
    *,
    recorder=None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``model`` on pre-tokenised examples, stepping ``recorder`` each step.

    Args:
        model: a classifier whose forward takes ``**encodings, labels=`` and
            returns an object with ``.loss`` (a Hugging Face model).
        encodings: model inputs, each a tensor with one row per example.
        labels: training labels, shape (N,).
        config: optimisation settings.
        recorder: a :class:`~freqlens.Recorder`; started here if not yet
            started, stepped after every optimisation step, not closed.
        progress: show a progress bar.

    Returns:
        A :class:`TrainResult`.
    """
    config = config or TrainConfig()
    labels = torch.as_tensor(labels, dtype=torch.long)
    n = len(labels)
    per_epoch = steps_per_epoch(n, config.batch_size)
    total = per_epoch * config.epochs
    device = model_device(model)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
    generator = torch.Generator().manual_seed(config.seed)
    result = TrainResult(steps=0)
    began = time.perf_counter()
    recorded_before = recorder.seconds if recorder is not None else 0.0
    if recorder is not None and not recorder.recorded_steps:
        recorder.start(model, total_steps=total, epoch=0.0)
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress, leave=False)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            rows = order[start : start + config.batch_size]
            batch = trim_padding({k: v[rows] for k, v in encodings.items()})
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch, labels=labels[rows].to(device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            result.steps += 1
            result.losses.append(float(loss.detach()))
            if recorder is not None:
                recorder.step(result.steps, epoch=epoch + (start + len(rows)) / n, loss=result.losses[-1])
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{result.losses[-1]:.3f}")
    bar.close()
    model.eval()
    result.seconds = time.perf_counter() - began
    if recorder is not None:
        result.recording_seconds = recorder.seconds - recorded_before
    return result
