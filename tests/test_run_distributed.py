"""`freqlens run` on 2 CPU processes (torchrun, gloo) against the same runs in one process.

One launch of tests/run_distributed_worker.py (every rank calls ``freqlens.cli.main``
with ``run CONFIG --out DIR``, what ``torchrun -m freqlens.cli run`` runs; imports
dominate) covers a run without a defense and an automatic probe plan, one with a
reference set, gradient alignment and selection (``ga``), two refusals and a rank 0
that fails while writing; the references are the same ``freqlens run`` calls in this
process.
The tiny BERT has no dropout, so the data-parallel run takes the one-process steps
up to float rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import run_distributed_worker as worker
import torch

from freqlens import distributed
from freqlens.cli import main
from freqlens.recording import load_trajectory
from tests.models import save_tiny_bert, write_clean_csvs

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
CONFIG = """[model]
name = "{model}"
max_length = 32
[data]
path = "{data}"
[attack]
name = "badnets"
rate = 0.1
[analysis]
num_widths = 4
"""
CONFIGS = {
    # 80 steps at a rate that learns, and an automatic probe plan timed on rank 0 alone (bounds that
    # leave it one size, so that both runs probe alike)
    "vanilla": '[train]\nepochs = 4\nbatch_size = 8\nlr = 5e-3\n[record]\nschedule = "log:8"\n'
               'probe_size = "auto"\nbudget = 0.9\nmin_probe_size = 10\nmax_probe_size = 10\n',
    # a clean reference set, gradient alignment (pure in epoch 1, mixed in 2: a loss threshold it is
    # below at once) and selection by dev accuracy (rank 0's score decides);
    # 20 gentle steps: GA projects a step's gradient only where it conflicts with the reference gradient,
    # a switch that float rounding can flip near a tie, after which runs part (in one process as well)
    "ga": '[train]\nepochs = 2\nbatch_size = 16\nlr = 1e-3\n[record]\nschedule = "log:8"\nprobe_size = 12\n'
          '[defense]\nname = "ga"\nreference_size = 16\n[defense.ga]\nloss_threshold = 10.0\n',
}
STEPS = {"vanilla": 80, "ga": 20}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The configs, the 2-process launch (its folder and each rank's report) and its wall time."""
    folder = tmp_path_factory.mktemp("run-distributed")
    base = CONFIG.format(model=save_tiny_bert(folder / "model", dropout=0.0, seed=0), data=write_clean_csvs(folder / "data"))
    for name, extra in CONFIGS.items():
        (folder / f"{name}.toml").write_text(base + extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               str(Path(worker.__file__)), str(folder)]
    began = time.perf_counter()
    run = subprocess.run(command, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - began
    assert run.returncode == 0, f"torchrun: {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return folder, [json.loads((folder / f"rank{r}.json").read_text()) for r in range(WORLD)], seconds


@pytest.fixture(scope="module")
def single(launched, tmp_path_factory):
    """The same runs in one process (no launcher): their output folders."""
    folder, out = launched[0], tmp_path_factory.mktemp("run-single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process (module fixtures run before conftest's)
    try:
        for name in CONFIGS:
            assert main(["run", str(folder / f"{name}.toml"), "--out", str(out / name), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_write_once_and_match_one_process(launched, single, name):
    folder, reports, _ = launched
    for report in reports:
        assert report[name]["rc"] == 0, report[name]["stderr"]
        assert report["distributed"] == WORLD  # freqlens run joined the launcher's processes itself
    assert reports[1]["calls"] == []  # rank 1 neither wrote into --out nor timed a plan
    got, want = folder / name, single / name
    assert _files(got) == _files(want)  # one trajectory, one results.json, no checkpoint left
    assert not (got / "checkpoint").exists()
    a, b = (json.loads((path / "results.json").read_text()) for path in (got, want))
    for key in ("cacc", "asr", "false_trigger_rate", "net_backdoor_effect"):
        assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert a["steps"] == b["steps"] == STEPS[name] and a["snapshots"] == b["snapshots"]
    assert a["probes"]["size"] == b["probes"]["size"] and a["probes"]["sets"] == b["probes"]["sets"]
    assert a["config"] == b["config"] and a["dataset"] == b["dataset"]
    trajectories = load_trajectory(got / "trajectory"), load_trajectory(want / "trajectory")
    assert trajectories[0].complete and trajectories[0].steps.tolist() == trajectories[1].steps.tolist()
    for set_name in trajectories[1].names:
        outputs = [t.outputs[set_name] for t in trajectories]
        np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-4, rtol=0, err_msg=set_name)
        assert np.abs(outputs[1][-1] - outputs[1][0]).max() > 1e-3  # the model did train
    np.testing.assert_allclose(trajectories[0].scalars["loss"], trajectories[1].scalars["loss"], rtol=1e-5)
    for view, sets in b["analysis"]["learning_speeds"].items():
        for set_name, speeds in sets.items():
            for family, value in speeds.items():
                np.testing.assert_allclose(  # None (JSON null): undefined, where it is in both
                    np.array(a["analysis"]["learning_speeds"][view][set_name][family]["estimate"], dtype=float),
                    np.array(value["estimate"], dtype=float), atol=1e-4, err_msg=f"{view} {set_name} {family}")
    if name == "vanilla":
        assert b["cacc"] > 0.5 and b["majority_prediction_share"] < 0.9  # it learned (not collapsed)
        assert a["probes"]["plan"]["size"] == b["probes"]["plan"]["size"] == 10  # an automatic plan (rank 0's)
    else:  # the aligner ran on both processes' shares and took the one-process branches
        alignment = a["defense"]["alignment"], b["defense"]["alignment"]
        assert alignment[1]["pure_steps"] > 0 and alignment[1]["mixed_steps"] > 0
        for key in ("pure_steps", "mixed_steps", "first_reference_loss", "last_reference_loss", "mean_cosine"):
            assert alignment[0][key] == pytest.approx(alignment[1][key], rel=1e-4, abs=1e-6), key
        assert a["defense"]["epoch_dev_accuracy"] == pytest.approx(b["defense"]["epoch_dev_accuracy"], abs=1e-6)
        assert a["defense"]["best_epoch"] == b["defense"]["best_epoch"]


@pytest.mark.slow
def test_summary_is_printed_by_rank_0_alone(launched):
    _, reports, _ = launched
    summaries = [report["vanilla"]["stdout"] for report in reports]
    assert "clean accuracy (CACC)" in summaries[0] and summaries[1] == ""


@pytest.mark.slow
def test_a_refusal_stops_every_rank_alike(launched):
    folder, reports, _ = launched
    for scenario, words in (("held", "--overwrite"), ("device", "`model.device`")):
        errors = [report[scenario]["stderr"].strip() for report in reports]
        assert [report[scenario]["rc"] for report in reports] == [2, 2], scenario
        assert errors[0] == errors[1] and words in errors[0] and errors[0].count("\n") == 0, errors
    assert not (folder / "device").exists()


@pytest.mark.slow
def test_rank_0_failing_while_writing_leaves_no_rank_waiting(launched):
    folder, reports, seconds = launched
    assert reports[0]["write_fails"]["rc"] == 2 and "No space left on device" in reports[0]["write_fails"]["stderr"]
    assert reports[1]["write_fails"]["rc"] == 0  # rank 1 had returned: it waits for nothing rank 0 writes
    assert seconds < 240  # no collective timed out
    assert not (folder / "write-fails" / "results.json").exists()


# ------------------------------------------------------------------ one process, no launcher
def test_without_a_launcher_nothing_is_joined(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.init_from_environment("cuda:1") is False  # any device: no launcher, no check
    assert not torch.distributed.is_initialized()
    assert distributed.on_main(lambda x, y=0: x + y, 2, y=3) == 5
    with pytest.raises(KeyError, match="k"):
        distributed.on_main({}.__getitem__, "k")


@pytest.mark.parametrize("device", ["cuda:1", "cpu:0", "gpu"])
def test_a_device_with_an_index_is_refused_under_a_launcher(monkeypatch, device):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match=r"`model\.device` to be 'auto', 'cpu' or 'cuda' under a launcher"):
        distributed.init_from_environment(device)
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="needs a machine with at most one GPU")
def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", str(max(torch.cuda.device_count(), 1)))
    with pytest.raises(ValueError, match=r"GPU for every process.*--nproc-per-node.*`model\.device` = 'cpu'"):
        distributed.init_from_environment("cuda")
    assert not torch.distributed.is_initialized()


def test_an_error_that_cannot_be_pickled_travels_as_a_runtime_error():
    class Local(OSError):  # a class defined in a function cannot be pickled
        pass

    error = distributed._portable(Local("No space left on device"))
    assert type(error) is RuntimeError and str(error) == "Local: No space left on device"
    plain = FileExistsError("--out holds a run")
    assert distributed._portable(plain) is plain
