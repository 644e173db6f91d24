"""`freqlens run --resume`: a killed run goes on from its last epoch checkpoint and
ends as the uninterrupted run with the same seed would (issue 12)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_run import _tiny_experiment

import freqlens.experiment
from freqlens.cli import main
from freqlens.config import ExperimentConfig
from freqlens.experiment import run_experiment
from freqlens.recording import Recorder, load_trajectory

METRICS = ("cacc", "asr", "false_trigger_rate", "net_backdoor_effect")
STEPS_PER_EPOCH = 10  # 160 training examples, batches of 16


def _experiment(tmp_path: Path, defense: str = "vanilla", *, batch_size: int = 16, epochs: int = 3) -> Path:
    """A tiny BERT (dropout 0.1: the random state must be restored) on generated CSVs
    poisoned with AddSent; every step recorded."""
    return _tiny_experiment(tmp_path, f"""rate = 0.1
[train]
epochs = {epochs}
batch_size = {batch_size}
lr = 3e-4
[record]
schedule = "every:1"
probe_size = 12
[analysis]
num_widths = 3
[defense]
name = "{defense}"
reference_size = 16
""")


def _same_run(resumed: Path, whole: Path) -> None:
    """The resumed run ended as the uninterrupted one: metrics, steps, recording, defense log."""
    a, b = (json.loads((d / "results.json").read_text()) for d in (resumed, whole))
    for key in METRICS:
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert a["steps"] == b["steps"] and a["snapshots"] == b["snapshots"]
    if "defense" in b:
        assert a["defense"] == b["defense"]  # selection, alignment log, ABL's isolation
    ta, tb = load_trajectory(resumed / "trajectory"), load_trajectory(whole / "trajectory")
    assert ta.steps.tolist() == tb.steps.tolist() == list(range(b["steps"] + 1))
    assert ta.complete
    for name in tb.outputs:
        np.testing.assert_array_equal(ta.inputs[name], tb.inputs[name])
        np.testing.assert_allclose(ta.outputs[name], tb.outputs[name], rtol=0, atol=1e-6)
    assert not (resumed / "checkpoint").exists()  # deleted after a successful run


class Killed(BaseException):
    """Stands in for SIGKILL in-process (a BaseException: nothing catches it on the way)."""


@pytest.fixture
def kill_at(monkeypatch):
    """``kill_at(step)``: the next run dies right after recording ``step``."""
    original = Recorder.step

    def arm(step: int):
        def dying(self, at, **scalars):
            recorded = original(self, at, **scalars)
            if at == step:
                monkeypatch.setattr(Recorder, "step", original)
                raise Killed(f"killed after step {at}")
            return recorded

        monkeypatch.setattr(Recorder, "step", dying)

    return arm


@pytest.fixture
def no_figures(monkeypatch):
    """The figures and report take most of a tiny run's time and are not what is tested here."""
    monkeypatch.setattr(freqlens.experiment, "write_run_outputs", lambda *args, **kwargs: [])  # no figure failed


@pytest.mark.slow
@pytest.mark.parametrize(("defense", "kill"), [
    ("vanilla", 14),  # epoch 2
    ("vanilla", 30),  # the last step: resumed after epoch 2, epoch 3 re-taken
    ("lora", 25),  # best-dev selection: scores and the best epoch's weights survive
    ("ga", 17),  # gradient alignment: the reference batches' generator and the log survive
    ("abl", 15),  # ABL: killed in its clean phase (isolation done, isolated set saved)
    ("abl", 41),  # ... and in its unlearning phase (10 isolation steps, 3 clean epochs of 10, 1 unlearning step)
    ("dece", 25),  # DeCE: its loss's epoch (alpha_base ** epoch) continues at epoch 3, not 1
    ("early-loss", 12),  # a filtering defense: killed in its final phase (the flags saved, not taken again)
])
def test_resume_ends_as_the_uninterrupted_run(tmp_path, kill_at, no_figures, defense, kill):
    config = ExperimentConfig.from_toml(_experiment(tmp_path, defense))
    run_experiment(config, tmp_path / "whole", progress=False)
    kill_at(kill)
    with pytest.raises(Killed):
        run_experiment(config, tmp_path / "resumed", progress=False)
    before = load_trajectory(tmp_path / "resumed" / "trajectory")
    assert before.steps[-1] == kill and (tmp_path / "resumed" / "checkpoint" / "state.pt").is_file()
    results = run_experiment(config, tmp_path / "resumed", progress=False, resume=True)
    assert results["resumed_at_steps"] and results["resumed_at_steps"][0] < kill
    _same_run(tmp_path / "resumed", tmp_path / "whole")
    after = load_trajectory(tmp_path / "resumed" / "trajectory")
    kept = before.steps <= results["resumed_at_steps"][0]
    for name in before.outputs:  # the snapshots before the checkpoint are the killed run's own
        np.testing.assert_array_equal(after.outputs[name][: kept.sum()], before.outputs[name][kept])


def test_a_resumed_filtering_defense_keeps_the_flags_of_the_killed_run(tmp_path, kill_at, no_figures, monkeypatch):
    from freqlens.defenses.early_loss import EarlyLoss

    config = ExperimentConfig.from_toml(_experiment(tmp_path, "early-loss"))
    kill_at(12)
    with pytest.raises(Killed):
        run_experiment(config, tmp_path / "resumed", progress=False)

    def flag_again(*args, **kwargs):
        raise AssertionError("the resumed run flagged the training set again")

    monkeypatch.setattr(EarlyLoss, "flag", flag_again)
    results = run_experiment(config, tmp_path / "resumed", progress=False, resume=True)
    assert results["defense"]["removed"] == 32 and results["defense"]["trained_on"] == 128


@pytest.mark.slow
def test_resume_after_the_last_checkpoint_only_evaluates_and_analyses(tmp_path, no_figures, monkeypatch):
    config = ExperimentConfig.from_toml(_experiment(tmp_path, "lora", epochs=2))
    run_experiment(config, tmp_path / "whole", progress=False)
    evaluate = freqlens.experiment.evaluate_model

    def killed(*args, **kwargs):  # training and its last checkpoint are done; results.json is not
        monkeypatch.setattr(freqlens.experiment, "evaluate_model", evaluate)
        raise Killed("killed while evaluating")

    monkeypatch.setattr(freqlens.experiment, "evaluate_model", killed)
    with pytest.raises(Killed):
        run_experiment(config, tmp_path / "resumed", progress=False)
    results = run_experiment(config, tmp_path / "resumed", progress=False, resume=True)
    assert results["resumed_at_steps"] == [2 * STEPS_PER_EPOCH]  # no step is taken again
    _same_run(tmp_path / "resumed", tmp_path / "whole")


@pytest.mark.slow
def test_resume_before_the_first_checkpoint_restarts_from_scratch(tmp_path, kill_at, no_figures):
    config = ExperimentConfig.from_toml(_experiment(tmp_path, epochs=2))
    run_experiment(config, tmp_path / "whole", progress=False)
    kill_at(4)  # epoch 1: no training state yet, only the stored config and probe plan
    with pytest.raises(Killed):
        run_experiment(config, tmp_path / "resumed", progress=False)
    assert not (tmp_path / "resumed" / "checkpoint" / "state.pt").exists()
    results = run_experiment(config, tmp_path / "resumed", progress=False, resume=True)
    assert "resumed_at_steps" not in results  # a clean new trajectory, not a continued one
    _same_run(tmp_path / "resumed", tmp_path / "whole")


def test_resume_refuses_another_config_naming_the_keys(tmp_path, kill_at, no_figures, monkeypatch):
    path = _experiment(tmp_path, epochs=2)
    config = ExperimentConfig.from_toml(path)
    kill_at(12)
    with pytest.raises(Killed):
        run_experiment(config, tmp_path / "run", progress=False)
    loaded = []
    monkeypatch.setattr(freqlens.experiment, "load_model", lambda *a: loaded.append(1) or 1 / 0)
    other = ExperimentConfig.from_toml(path, overrides=["train.lr=1e-3", "train.seed=3"])
    with pytest.raises(ValueError, match=r"train\.lr \(0\.0003 -> 0\.001\); train\.seed \(0 -> 3\)"):
        run_experiment(other, tmp_path / "run", progress=False, resume=True)
    # Without --resume or --overwrite an existing run is refused before the model loads.
    with pytest.raises(FileExistsError, match="--overwrite.*--resume"):
        run_experiment(config, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="at most one"):
        run_experiment(config, tmp_path / "run", progress=False, resume=True, overwrite=True)
    assert not loaded
    assert (tmp_path / "run" / "checkpoint" / "state.pt").is_file()  # nothing was touched


def _flip_labels(path: Path) -> None:
    import csv

    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows([rows[0]] + [[text, 1 - int(label)] for text, label in rows[1:]])


@pytest.mark.parametrize("train", ["train", "mytrain"])  # the default file, and one named by data.splits.train
def test_resume_refuses_changed_training_data_naming_the_file_and_hashes(tmp_path, kill_at, no_figures,
                                                                         monkeypatch, train):
    """The dataset identity (the file read, the SHA-256 of its bytes) is stored in the checkpoint and
    the trajectory's meta.json when the run starts; --resume on a changed file is refused, naming it."""
    import hashlib
    import shutil

    path = _experiment(tmp_path, epochs=2)
    data = tmp_path / "data"
    if train != "train":
        shutil.copy(data / "train.csv", data / f"{train}.csv")
        _flip_labels(data / "train.csv")  # the decoy: a run that hashed train.csv would record this one
        path.write_text(path.read_text().replace("[data]\n", f'[data]\nsplits = {{train = "{train}"}}\n'))
    config = ExperimentConfig.from_toml(path)
    assert config.data.splits == ({} if train == "train" else {"train": train})
    out = tmp_path / "run"
    kill_at(12)  # in epoch 2, after the checkpoint of epoch 1
    with pytest.raises(Killed):
        run_experiment(config, out, progress=False)
    read = (data / f"{train}.csv").resolve()
    digest = hashlib.sha256(read.read_bytes()).hexdigest()
    stored = json.loads((out / "checkpoint" / "identity.json").read_text())
    assert stored["train_file"] == str(read) and stored["train_sha256"] == digest
    meta = json.loads((out / "trajectory" / "meta.json").read_text())  # a killed run keeps it too
    assert meta["dataset_identity"] == stored and meta["config"]["data"]["path"] == config.to_dict()["data"]["path"]
    _flip_labels(read)
    loaded = []
    monkeypatch.setattr(freqlens.experiment, "load_model", lambda *a: loaded.append(1) or 1 / 0)
    named = rf"(?s){train}\.csv.*{digest}.*train_sha256 \('{digest}' -> '[0-9a-f]{{64}}'\)"
    with pytest.raises(ValueError, match=named):
        run_experiment(config, out, progress=False, resume=True)
    assert not loaded  # refused before the model loads
    assert (out / "checkpoint" / "state.pt").is_file() and not (out / "results.json").exists()


def test_resume_refuses_a_checkpoint_without_a_stored_identity(tmp_path, kill_at, no_figures):
    path = _experiment(tmp_path, epochs=2)
    config = ExperimentConfig.from_toml(path)
    kill_at(12)
    with pytest.raises(Killed):
        run_experiment(config, tmp_path / "run", progress=False)
    (tmp_path / "run" / "checkpoint" / "identity.json").unlink()  # as an older freqlens left it
    with pytest.raises(ValueError, match=r"identity\.json.*missing.*--overwrite"):
        run_experiment(config, tmp_path / "run", progress=False, resume=True)


def test_cli_resume_messages(tmp_path, capsys, kill_at, no_figures, monkeypatch):
    path = _experiment(tmp_path, epochs=2)
    out = tmp_path / "run"
    kill_at(12)
    with pytest.raises(Killed):
        main(["run", str(path), "--out", str(out), "--no-progress"])
    monkeypatch.setattr(freqlens.experiment, "load_model", lambda *a: 1 / 0)
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "--overwrite" in error and "--resume" in error and "overwrite=True" not in error
    assert main(["run", str(path), "--out", str(out), "--resume", "--set", "train.epochs=3"]) == 2
    assert "train.epochs (2 -> 3)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not allowed together
        main(["run", str(path), "--out", str(out), "--resume", "--overwrite"])


@pytest.mark.slow
def test_finished_run_keeps_its_checkpoint_only_when_asked(tmp_path, no_figures):
    path = _experiment(tmp_path, epochs=1)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--keep-checkpoint"]) == 0
    assert {p.name for p in (out / "checkpoint").iterdir()} == {"config.json", "identity.json", "plan.json",
                                                                 "state.pt"}
    # A finished run whose checkpoint is gone: nothing to resume.
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert not (out / "checkpoint").exists()
    with pytest.raises(FileExistsError, match="finished"):
        run_experiment(ExperimentConfig.from_toml(path), out, progress=False, resume=True)


def _snapshot_steps(trajectory: Path) -> list[int]:
    return sorted(int(p.stem[len("step-"):]) for p in (trajectory / "snapshots").glob("step-*.npz"))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_at_a_random_step_then_resume_matches_the_uninterrupted_run(tmp_path, no_figures):
    """The issue's acceptance test: `freqlens run` in a subprocess killed with SIGKILL at a
    random step of epoch 2, then `--resume`: the same results.json metrics and trajectory
    as the run never killed (same seed; dropout on). (The killed child writes figures as
    usual; the two runs compared here skip them, for time.)"""
    batch = 4  # 40 steps an epoch: a step of epoch 2 is caught with steps to spare
    config = _experiment(tmp_path, batch_size=batch, epochs=2)
    per_epoch = 160 // batch
    target = random.Random(time.time_ns()).randint(per_epoch + 1, 2 * per_epoch - 12)
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "freqlens.cli", "run", str(config), "--out", str(out),
                              "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (out / "trajectory" / "snapshots" / f"step-{target:09d}.npz").exists():
            if child.poll() is not None:
                pytest.fail(f"the run ended (code {child.returncode}) before step {target}: "
                            f"{child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the run did not reach step {target} in time")
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    killed_at = _snapshot_steps(out / "trajectory")[-1]
    assert per_epoch < killed_at < 2 * per_epoch, f"killed at step {killed_at} (target {target})"
    assert not (out / "results.json").exists()

    assert main(["run", str(config), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert main(["run", str(config), "--out", str(tmp_path / "whole"), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    (resumed_at,) = results["resumed_at_steps"]  # the end of the last epoch finished before the kill
    assert resumed_at % per_epoch == 0 and per_epoch <= resumed_at <= killed_at, (target, killed_at, resumed_at)
    _same_run(out, tmp_path / "whole")


def _as_an_earlier_version_stored_it(config: dict, **defense) -> dict:
    """``config`` (JSON form) with the flat defense keys of earlier versions and no ``attack.options``."""
    from freqlens.defenses.registry import FLAT_KEYS

    old = json.loads(json.dumps(config))
    nested = old["defense"]
    for flat, dotted in FLAT_KEYS.items():
        table, _, name = dotted.partition(".")
        if isinstance(nested.get(table), dict) and name in nested[table]:
            old["defense"][flat] = nested[table][name]
    for flat, dotted in FLAT_KEYS.items():
        old["defense"].pop(dotted.partition(".")[0], None)
    old["defense"].update(defense)
    old["attack"].pop("options")
    return old


def test_resume_reads_a_checkpoint_of_an_earlier_version_in_todays_form(tmp_path):
    """A checkpoint stored with flat defense keys (``ga_mu``) and without later settings (``attack.options``)
    resumes under today's config with the same settings, and a setting that differs is named in today's words."""
    from freqlens.checkpoint import prepare_out, start_out

    config = ExperimentConfig.from_dict({"defense": {"name": "ga", "ga": {"mu": 0.2}}})
    out = tmp_path / "run"
    checkpoint = start_out(out, config, identity={})
    stored = json.loads((checkpoint.directory / "config.json").read_text())
    (checkpoint.directory / "config.json").write_text(json.dumps(_as_an_earlier_version_stored_it(stored)))
    assert "ga_mu" in json.loads((checkpoint.directory / "config.json").read_text())["defense"]
    prepare_out(out, config, overwrite=False, resume=True)  # the same settings: no difference
    (checkpoint.directory / "config.json").write_text(json.dumps(_as_an_earlier_version_stored_it(stored, ga_mu=0.3)))
    with pytest.raises(ValueError, match=r"defense\.ga\.mu \(0\.3 -> 0\.2\)$|defense\.ga\.mu \(0\.3 -> 0\.2\)\."):
        prepare_out(out, config, overwrite=False, resume=True)
