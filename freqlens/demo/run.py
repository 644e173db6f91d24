"""``freqlens demo``: the whole loop on the embedded task, offline, on the CPU.

Generate the poisoned task, train a tiny BERT on it with the recorder on, run
the spectral analysis, and write the heat maps, ``results.json`` and
``report.html``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import torch

from freqlens.analysis import AnalysisConfig
from freqlens.demo.model import make_model, make_tokenizer
from freqlens.demo.task import TaskConfig, make_task
from freqlens.experiment import Setup, record_and_analyse
from freqlens.recording.plan import RecordConfig
from freqlens.training import TrainConfig


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo; the defaults finish in about a minute on 2 CPU cores."""

    task: TaskConfig = field(default_factory=TaskConfig)  # the generated task
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, batch_size=32, lr=2e-3))
    hidden_size: int = 64  # tiny BERT width
    layers: int = 2  # tiny BERT depth
    heads: int = 4  # attention heads
    max_length: int = 32  # tokens per sentence, padded (the kernel's L)
    probe_size: int = 200  # examples per probe set (clean, backdoor, control)
    snapshots: int = 60  # log-spaced snapshots over the run
    num_widths: int = 12  # filter widths chosen from the data
    threshold: float = 0.5  # converged: below this fraction of the first value
    threads: int | None = 2  # torch CPU threads (None: torch's default)

    @classmethod
    def quick(cls, seed: int = 0) -> DemoConfig:
        """Short settings for tests: a few seconds."""
        return cls(
            task=TaskConfig(num_train=320, num_dev=60, num_test=80, seed=seed),
            train=TrainConfig(epochs=2, batch_size=32, lr=2e-3, seed=seed),
            hidden_size=32,
            heads=2,
            probe_size=40,
            snapshots=12,
            num_widths=5,
        )

    def with_seed(self, seed: int) -> DemoConfig:
        """The same settings with every seed set to ``seed``."""
        return replace(self, task=replace(self.task, seed=seed), train=replace(self.train, seed=seed))


def run_demo(out: str | Path, config: DemoConfig | None = None, *, progress: bool = True,
             overwrite: bool = False) -> dict:
    """Run the demo and write its outputs into ``out``.

    Writes ``trajectory/`` (the recording), ``heatmap.png`` (joint view),
    ``heatmap_separate.png`` (the paper's per-set kernels), ``curves.png``,
    ``results.json`` and ``report.html``.

    Returns:
        The contents of ``results.json``.
    """
    config = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    task = make_task(config.task)
    tokenizer = make_tokenizer()
    model = make_model(len(tokenizer), hidden_size=config.hidden_size, layers=config.layers,
                       heads=config.heads, max_length=config.max_length, seed=config.train.seed)
    sections = SimpleNamespace(
        train=config.train, record=RecordConfig(schedule=f"log:{config.snapshots}", probe_size=config.probe_size),
        analysis=AnalysisConfig(num_widths=config.num_widths, threshold=config.threshold))
    setup = Setup(model, tokenizer, task, config.max_length,
                  title="freqlens demo: a rare-token backdoor in a tiny BERT",
                  info={"config": asdict(config), "dataset": {"name": task.name, **task.info}})
    return record_and_analyse(setup, out, sections, progress=progress, overwrite=overwrite)
