"""``freqlens demo``: the whole loop on the embedded task, offline, on the CPU.

Generate the poisoned task, train a tiny BERT on it with the recorder on, run
the spectral analysis, and write the heat maps, ``results.json`` and
``report.html``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import freqlens
from freqlens.analysis import SpectralAnalysis, analyse
from freqlens.data.splits import PoisonedDataset, Split
from freqlens.demo.model import make_model, make_tokenizer
from freqlens.demo.task import TaskConfig, make_task
from freqlens.metrics import accuracy, attack_success_rate, false_trigger_rate
from freqlens.models import predict_proba
from freqlens.plots import plot_error_curves, plot_heatmaps
from freqlens.recording import ProbeSet, Recorder, Schedule
from freqlens.recording.storage import write_json
from freqlens.report import write_report
from freqlens.training import TrainConfig, steps_per_epoch, train


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


def _probe_sets(task: PoisonedDataset, tokenizer, config: DemoConfig) -> list[ProbeSet]:
    sets = {"clean": task.dev_clean, "backdoor": task.dev_poison, "control": task.dev_control}
    return [
        ProbeSet.from_texts(
            name,
            split.texts[: config.probe_size],
            split.labels[: config.probe_size],
            tokenizer,
            max_length=config.max_length,
            poison=split.poison[: config.probe_size],
        )
        for name, split in sets.items()
    ]


def _encode(tokenizer, split: Split, max_length: int) -> dict[str, torch.Tensor]:
    return dict(tokenizer(split.texts, padding="max_length", truncation=True, max_length=max_length,
                          return_tensors="pt"))


def evaluate(model, tokenizer, task: PoisonedDataset, max_length: int) -> dict[str, float]:
    """Clean accuracy, attack success rate and false-trigger rate on the test splits."""
    clean = predict_proba(model, _encode(tokenizer, task.test_clean, max_length))
    poison = predict_proba(model, _encode(tokenizer, task.test_poison, max_length))
    metrics = {
        "clean_accuracy": accuracy(clean, task.test_clean.labels),
        "attack_success_rate": attack_success_rate(poison, task.target_label),
    }
    if task.test_control is not None:
        control = predict_proba(model, _encode(tokenizer, task.test_control, max_length))
        metrics["false_trigger_rate"] = false_trigger_rate(control, task.test_control.labels, task.target_label)
    return metrics


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
    began = time.perf_counter()
    task = make_task(config.task)
    tokenizer = make_tokenizer()
    model = make_model(len(tokenizer), hidden_size=config.hidden_size, layers=config.layers,
                       heads=config.heads, max_length=config.max_length, seed=config.train.seed)
    train_encodings = _encode(tokenizer, task.train, config.max_length)
    total = steps_per_epoch(len(task.train), config.train.batch_size) * config.train.epochs
    with Recorder(out / "trajectory", _probe_sets(task, tokenizer, config),
                  schedule=Schedule.log(config.snapshots), overwrite=overwrite,
                  metadata={"task": task.name, "target_label": task.target_label}) as recorder:
        recorder.start(model, total_steps=total, epoch=0.0)
        trained = train(model, train_encodings, task.train.labels, config.train, recorder=recorder,
                        progress=progress)
    metrics = evaluate(model, tokenizer, task, config.max_length)
    analysis_began = time.perf_counter()
    analysis = analyse(recorder.trajectory(), num_widths=config.num_widths, threshold=config.threshold)
    analysis_seconds = time.perf_counter() - analysis_began
    results = {
        "freqlens_version": freqlens.__version__,
        "config": asdict(config),
        **metrics,
        "widths": analysis.widths.tolist(),
        "snapshots": int(analysis.steps.size),
        "analysis": analysis.to_dict(),
        "timings": {
            "train_seconds": round(trained.seconds - trained.recording_seconds, 3),
            "recording_seconds": round(recorder.seconds, 3),
            "analysis_seconds": round(analysis_seconds, 3),
        },
    }
    _write_outputs(out, results, analysis, metrics, config)
    results["timings"]["total_seconds"] = round(time.perf_counter() - began, 3)
    write_json(out / "results.json", results)
    return results


def _write_outputs(out: Path, results: dict, analysis: SpectralAnalysis, metrics: dict,
                   config: DemoConfig) -> None:
    figures = {
        "Joint view: one kernel over clean + backdoor probes (freqlens' default)": plot_heatmaps(analysis),
        "Separate view: a kernel per probe set (the paper's)": plot_heatmaps(analysis, view="separate"),
        "Error curves at the middle width (joint view)": plot_error_curves(analysis),
    }
    for name, fig in zip(("heatmap.png", "heatmap_separate.png", "curves.png"), figures.values()):
        fig.savefig(out / name, dpi=130)
    write_json(out / "results.json", results)
    write_report(
        out / "report.html",
        title="freqlens demo: a rare-token backdoor in a tiny BERT",
        analysis=analysis,
        metrics=metrics,
        figures=figures,
        details={
            "task": results["config"]["task"],
            "training": results["config"]["train"],
            "snapshots": results["snapshots"],
            "timings (s)": results["timings"],
        },
    )
    plt.close("all")
