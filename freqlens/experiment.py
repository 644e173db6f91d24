"""One experiment end to end: ``freqlens run CONFIG.toml --out DIR``.

:func:`run_experiment` reads top to bottom: seed, data, model, defense
prepare (and the detectors' checks), record and fit, evaluate, detect
(the ``[detector]`` section's inference-time detectors), analyse, write. Each step is a function of
the package that owns it and takes only its own config section
(:mod:`freqlens.config` composes the sections). :func:`record_and_analyse`,
the part from recording to writing, is shared with ``freqlens demo``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from freqlens import __version__, distributed
from freqlens.analysis import analyse
from freqlens.checkpoint import Checkpoint, prepare_out, start_out
from freqlens.config import ExperimentConfig
from freqlens.data.experiment import load_experiment
from freqlens.data.identity import FIELDS as IDENTITY_FIELDS
from freqlens.data.identity import dataset_identity
from freqlens.data.splits import PoisonedDataset, encode, split_reference
from freqlens.defenses import make_defense, save_defended
from freqlens.detectors import Victim, evaluate_detector, make_detectors
from freqlens.metrics import accuracy, collapse_warning, evaluate_model
from freqlens.models import predict_proba
from freqlens.models.loading import load_model
from freqlens.recording import Recorder
from freqlens.recording.plan import build_probe_sets, probe_plan, recording_warning
from freqlens.recording.spaces import check_input_spaces
from freqlens.recording.storage import write_json
from freqlens.report import write_run_outputs
from freqlens.training import seed_everything, train


def run_experiment(config: ExperimentConfig, out: str | Path, *, progress: bool = True,
                   overwrite: bool = False, resume: bool = False, keep_checkpoint: bool = False) -> dict | None:
    """Run one experiment and write its outputs into ``out``; under ``torchrun`` or ``accelerate
    launch`` every process calls it alike, they train data-parallel and rank 0 alone writes.

    At the end of every epoch the training state is checkpointed into
    ``out/checkpoint/`` (the latest only; see :mod:`freqlens.checkpoint`).
    ``resume=True`` continues a killed run from it, on the config and the
    training data (file and SHA-256) it was started with, so ``results.json``
    has the metrics of an uninterrupted run with the same seed; a run killed
    before its first epoch checkpoint starts afresh. The checkpoint is
    deleted after a successful run unless ``keep_checkpoint``.

    Returns:
        The contents of ``results.json``: ``cacc``, ``asr``,
        ``false_trigger_rate``, ``net_backdoor_effect``, the config as run,
        the dataset, the defense, the analysis, probes and timings (None on other ranks).

    Raises:
        FileExistsError: ``out`` holds a run and neither ``overwrite`` nor
            ``resume`` is set (checked before anything is loaded), or
            ``resume`` finds a finished run.
        ValueError: ``overwrite`` and ``resume`` together; a resume whose
            config or training data differ from the stored ones (named); any
            setting that does not fit the model or data, before ``out`` is
            touched (named by its config key).
    """
    out = Path(out)
    distributed.init_from_environment(config.model.device)  # a no-op without a launcher
    checkpoint, fresh = prepare_out(out, config, overwrite=overwrite, resume=resume)
    began = time.perf_counter()
    seed_everything(config.train.seed)
    dataset = load_experiment(config.data, config.attack, seed=config.train.seed)
    as_run = config.to_dict()
    identity = dataset_identity(as_run, dataset.info)  # once, from the file read, at the start
    if not fresh:  # resuming: on the data the checkpoint was trained on only (rank 0 reads it)
        distributed.on_main(checkpoint.check_identity, identity)
    defense = make_defense(config.defense)
    dataset, reference = (split_reference(dataset, defense.reference_size, seed=config.train.seed,
                                          argument="defense.reference_size")
                          if defense.needs_reference else (dataset, None))
    tokenizer, model = load_model(config.model, num_classes=config.data.num_classes)
    prepared = defense.prepare(model, max_length=config.model.max_length)  # fails before training
    detectors = make_detectors(config.detector, seed=config.train.seed)
    for detector in detectors:  # what a detector needs (RAP's word, ONION's language model), before training
        detector.check(prepared.model, tokenizer)
    check_input_spaces(model, config.record.input_spaces, argument="record.input_spaces")
    if fresh:  # every setting has been checked: only now is anything in `out` replaced
        checkpoint = start_out(out, config, identity)
    max_length = config.model.max_length
    dev = encode(tokenizer, dataset.dev_clean, max_length) if defense.selects_best() else None
    fit = partial(defense.fit, poison=dataset.train.poison, selector=lambda m: accuracy(
        predict_proba(m, dev, batch_size=config.record.batch_size), dataset.dev_clean.labels),
        reference=None if reference is None else (encode(tokenizer, reference, max_length), reference.labels))
    setup = Setup(prepared.model, tokenizer, dataset, max_length,
                  title=f"freqlens run: {config.model.name} on {dataset.name}, defense {defense.name}",
                  info={"config": as_run,
                        "dataset": {"name": dataset.name, "train": len(dataset.train),
                                    "train_poisoned": int(dataset.train.poison.sum()), **dataset.info,
                                    "identity": identity}})
    detect = partial(apply_detectors, detectors, batch_size=config.detector.batch_size) if detectors else None
    results = record_and_analyse(setup, out, config, fit=fit, detect=detect, progress=progress,
                                 overwrite=overwrite or resume, checkpoint=checkpoint, began=began)
    if results is not None and config.defense.save_model:  # None: not rank 0, which writes
        save_defended(prepared.model, out / "model", prepared.layout)
    if results is not None and not keep_checkpoint:
        checkpoint.delete()
    return results


@dataclass
class Setup:
    """What :func:`record_and_analyse` trains, on what, and how the run is described.

    ``info`` goes into ``results.json`` as it is (the config as run, the
    dataset); ``info["dataset"]["identity"]`` and ``info["config"]`` also go
    into the trajectory's ``meta.json`` when training starts, so that
    ``freqlens report`` can group a killed run (data made in memory gets an
    identity naming no file).
    """

    model: torch.nn.Module
    tokenizer: object  # a Hugging Face tokenizer (or one with its call signature)
    dataset: PoisonedDataset
    max_length: int  # tokens per example (the kernel's L)
    title: str = "freqlens run"
    info: Mapping = field(default_factory=dict)


def apply_detectors(detectors, model, tokenizer, dataset: PoisonedDataset, *, max_length: int,
                    batch_size: int = 64) -> dict[str, dict]:
    """Each inference-time detector measured on the trained ``model``
    (:func:`~freqlens.detectors.evaluate_detector`): detector name -> its metrics, for ``results.json``'s
    ``detectors``. A detector that fails gets ``{"name", "error"}`` instead (the run's training, metrics
    and analysis are kept; :func:`record_and_analyse` adds a warning), so a failure after training never
    costs the trained run."""
    victim = Victim(model, tokenizer, max_length, batch_size=batch_size, target_label=dataset.target_label)
    measured = {}
    for detector in detectors:
        try:
            measured[detector.name] = evaluate_detector(detector, victim, dataset)
        except Exception as error:  # the trained run is kept: the failure is recorded, not raised
            measured[detector.name] = {"name": detector.name, "error": f"{type(error).__name__}: {error}"}
    return measured


def record_and_analyse(setup: Setup, out: Path, sections, *, fit: Callable | None = None,
                       detect: Callable | None = None, progress: bool = True,
                       overwrite: bool = False, checkpoint: Checkpoint | None = None,
                       began: float | None = None) -> dict:
    """Train ``setup.model`` on ``setup.dataset.train`` with the recorder on, evaluate, analyse, write.

    ``sections`` holds the ``train``, ``record`` and ``analysis`` sections
    (an :class:`~freqlens.config.ExperimentConfig` or the demo's config).
    ``fit(model, encodings, labels, train_config, recorder=, progress=[, checkpoint=])``
    trains and returns ``(TrainResult, dict)``, the dict going into
    ``results.json`` as ``defense`` (default: plain
    :func:`~freqlens.training.train`). ``detect(model, tokenizer, dataset, max_length=)``
    measures inference-time detectors on the trained model and returns what goes
    into ``results.json`` as ``detectors`` (:func:`apply_detectors`; default:
    none). ``checkpoint``: store the probe plan
    and epoch checkpoints there, and resume from a training state it holds
    (:func:`~freqlens.recording.plan.probe_plan`). ``began``: the
    ``time.perf_counter()`` the total time counts from (default: now).

    Returns:
        The contents of ``results.json``, which is written last (by rank 0; other ranks: None).
    """
    began = time.perf_counter() if began is None else began
    model, dataset, max_length = setup.model, setup.dataset, setup.max_length
    info = dict(setup.info)
    identity = dict((info.get("dataset") or {}).get("identity")
                    or {**dict.fromkeys(IDENTITY_FIELDS), "name": dataset.name})
    info["dataset"] = {**dict(info.get("dataset") or {"name": dataset.name}), "identity": identity}
    record = sections.record
    encodings = encode(setup.tokenizer, dataset.train, max_length)
    stored = probe_plan(model, dataset, encodings, train_config=sections.train, record=record, checkpoint=checkpoint)
    probes = build_probe_sets(dataset, setup.tokenizer, size=stored["size"], max_length=max_length,
                              max_sets=stored["num_sets"])
    resuming = checkpoint is not None and checkpoint.state is not None
    with Recorder(out / "trajectory", probes, schedule=stored["schedule"], batch_size=record.batch_size,
                  overwrite=overwrite and not resuming, resume=resuming, input_spaces=record.input_spaces,
                  precision=record.precision,
                  metadata={"dataset": dataset.name, "target_label": dataset.target_label,
                            "dataset_identity": identity, "config": info.get("config")}) as recorder:
        more = {} if checkpoint is None else {"checkpoint": checkpoint}
        trained, defense = (fit or _train)(model, encodings, dataset.train.labels, sections.train,
                                           recorder=recorder, progress=progress, **more)
    if not distributed.is_main():  # data-parallel: rank 0 evaluates, analyses and writes
        return None
    metrics = evaluate_model(model, setup.tokenizer, dataset, max_length=max_length, batch_size=record.batch_size)
    detected = detect(model, setup.tokenizer, dataset, max_length=max_length) if detect is not None else None
    analysis_began = time.perf_counter()
    trajectory = recorder.trajectory()
    analysis = analyse(trajectory, sections.analysis)
    train_seconds = trained.seconds - trained.recording_seconds
    wall = train_seconds + recorder.seconds  # training and recording, start included
    timings = {"train_seconds": round(train_seconds, 3),
               "seconds_per_step": round(train_seconds / max(trained.steps, 1), 4),
               "recording_seconds": round(recorder.seconds, 3),
               "recording_share": round(recorder.seconds / wall, 4) if wall > 0 else None,
               "analysis_seconds": round(time.perf_counter() - analysis_began, 3)}
    probing = {"size": min(stored["size"], *(len(p) for p in probes)), "sets": [p.name for p in probes],
               "plan": stored["plan"]}
    probing.update({key: trajectory.meta[key] for key in ("input_spaces", "probe_precision")
                    if trajectory.meta.get(key) is not None})  # what the recorder chose and checked
    warnings = [w for w in (recording_warning(stored, timings["recording_share"], record.budget),
                            collapse_warning(metrics), *analysis.warnings) if w]
    warnings += [f"Detector {name!r} failed after training ({entry['error']}); the run's training, metrics and "
                 f"analysis are kept, and results.json's detectors.{name} holds the error."
                 for name, entry in (detected or {}).items() if "error" in entry]
    warnings += [f"Detector {name!r}: {entry['warning']}" for name, entry in (detected or {}).items()
                 if entry.get("warning")]
    results = {"freqlens_version": __version__, **info, **metrics,
               **({"defense": defense} if defense is not None else {}),
               **({"detectors": detected} if detected else {}),
               "steps": trained.steps, "snapshots": int(analysis.steps.size), "widths": analysis.widths.tolist(),
               "analysis": analysis.to_dict(), "timings": timings, "probes": probing,
               "environment": environment(model), "warnings": warnings}
    if trajectory.meta.get("resumed"):  # the steps a killed run was resumed at (freqlens run --resume)
        results["resumed_at_steps"] = [entry["step"] for entry in trajectory.meta["resumed"]]
    warnings += write_run_outputs(out, title=setup.title, analysis=analysis, metrics=metrics,
                                  details={"timings (s)": timings, "probes": probing, **info}, warnings=warnings,
                                  defense=defense, detectors=detected)
    results["timings"]["total_seconds"] = round(time.perf_counter() - began, 3)
    write_json(out / "results.json", results)
    return results


def environment(model: torch.nn.Module) -> dict:
    """Where a run ran, for ``results.json`` (``environment``): ``device`` (the model's device, with
    the GPU's name, e.g. ``"cuda:0 (NVIDIA H200)"``, or ``"cpu"``), ``processor`` (CPU architecture),
    the versions of torch, transformers and peft, Python's version and the platform string. Numbers
    from different devices differ in their last digits (other kernels), so tables that gather runs
    made elsewhere say which device made each."""
    import peft
    import transformers

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {"device": name, "processor": platform.machine(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def _train(model, encodings, labels, train_config, **options):
    return train(model, encodings, labels, train_config, **options), None
