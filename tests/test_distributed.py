"""Data-parallel training on 2 CPU processes (gloo): the recorder, freqlens' loop with
gradient alignment, and the Hugging Face Trainer, against single-process references.

One ``torchrun`` launch runs every scenario of tests/distributed_worker.py (imports
dominate its ~25 s); the tests read what each rank wrote and rerun the same
scenarios here, in one process, for the references.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import numpy as np
import pytest
import torch

from freqlens import distributed
from freqlens.recording import load_trajectory

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Run the worker on 2 processes; returns its output folder and each rank's report."""
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               str(Path(worker.__file__)), str(out)]  # --standalone: a free port, chosen by the rendezvous
    run = subprocess.run(command, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"torchrun: {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


# ------------------------------------------------------------------ the recorder
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["joint", "separate", "tiny"])
def test_recorder_gathers_outputs_to_rank_0_in_probe_order(launched, tmp_path, kind):
    out, reports = launched
    assert not (out / f"{kind}-rank1").exists()  # rank 1 touched nothing
    for report in reports:
        assert report["world"] == WORLD
        assert report["recorders"][kind]["steps"] == [0, 2, 4, 5]
        assert report["recorders"][kind]["seconds"] > 0
    got = load_trajectory(out / f"{kind}-rank0")
    want = worker.record(tmp_path / "reference", kind).trajectory()
    assert got.complete and got.meta["snapshots"] == 4
    assert got.steps.tolist() == want.steps.tolist() == [0, 2, 4, 5]
    assert got.names == want.names
    np.testing.assert_allclose(got.scalars["loss"], [np.nan, 2, 4, 5])  # rank 0's scalars
    for name in want.names:
        np.testing.assert_allclose(got.inputs[name], want.inputs[name], atol=1e-6)
        np.testing.assert_array_equal(got.labels[name], want.labels[name])
        np.testing.assert_allclose(got.outputs[name], want.outputs[name], atol=1e-5, rtol=0)
    assert not np.allclose(got.outputs[got.names[0]][0], got.outputs[got.names[0]][-1])


# ------------------------------------------------------------------ freqlens' loop with alignment
@pytest.mark.slow
def test_train_with_alignment_takes_the_single_process_steps(launched):
    out, reports = launched
    ranks = [np.load(out / f"train-rank{r}.npz") for r in range(WORLD)]
    model, result, rows = worker.fit()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(ranks[1][name], ranks[0][name], rtol=0, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(ranks[0][name], p.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    start = worker.tiny_bert(0).classifier.weight.detach().numpy()
    assert not np.allclose(ranks[0]["classifier.weight"], start)
    for report in reports:
        got = report["train"]
        assert got["losses"] == pytest.approx(result.losses, rel=1e-5)
        assert got["alignment"]["branch"] == result.alignment["branch"] == ["pure"] * 3 + ["mixed"] * 3
        assert got["alignment"]["mu"] == result.alignment["mu"]
        for key in ("cosine", "reference_loss", "mean_reference_norm"):
            assert got["alignment"][key] == pytest.approx(result.alignment[key], rel=1e-4, abs=1e-6), key
        assert got["scores"] == pytest.approx(result.epoch_scores, rel=1e-5)
        assert got["best_epoch"] == result.best_epoch
    # the work was split: each rank ran about half the rows (training and reference) forward
    assert [r["train"]["rows"] for r in reports] == [46, 38] and rows == 84


@pytest.mark.slow
def test_alignment_on_a_span_of_reference_gradients_takes_the_single_process_steps(launched):
    out, reports = launched
    ranks = [np.load(out / f"train-span-rank{r}.npz") for r in range(WORLD)]
    model, result, _ = worker.fit(subspace=3)
    single, _, _ = worker.fit(subspace=1)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(ranks[1][name], ranks[0][name], rtol=0, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(ranks[0][name], p.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    assert any(not np.allclose(ranks[0][n], p.detach().numpy()) for n, p in single.named_parameters())
    for report in reports:
        got = report["train_span"]
        assert got["losses"] == pytest.approx(result.losses, rel=1e-5)
        assert got["alignment"]["branch"] == result.alignment["branch"]
        for key in ("cosine", "reference_loss", "mean_reference_norm"):
            assert got["alignment"][key] == pytest.approx(result.alignment[key], rel=1e-4, abs=1e-6), key


# ------------------------------------------------------------------ the Hugging Face Trainer (DDP)
@pytest.mark.slow
def test_trainer_records_one_trajectory_and_aligned_ranks_stay_in_sync(launched):
    out, reports = launched
    for report in reports:
        got = report["trainer"]
        assert got["wrapper"] == "DistributedDataParallel"  # the Trainer did run data parallel
        assert got["steps"] == got["aligned"] == 4
        assert got["recorded_steps"] == [0, 3, 4] and got["closed"]
        np.testing.assert_allclose(got["checksums"][1], got["checksums"][0], rtol=0, atol=1e-9)
    trajectory = load_trajectory(out / "trainer-trajectory")
    assert trajectory.complete and trajectory.steps.tolist() == [0, 3, 4]
    files = sorted(p.name for p in (out / "trainer-trajectory").rglob("*") if p.is_file())
    assert files == ["backdoor.npz", "clean.npz", "meta.json", *(f"step-00000000{s}.npz" for s in (0, 3, 4))]
    np.testing.assert_allclose(trajectory.scalars["epoch"], [0, 0.75, 1])
    for outputs in trajectory.outputs.values():
        assert outputs.shape[:2] == (3, len(outputs[0]))
        np.testing.assert_allclose(outputs.sum(-1), 1, atol=1e-5)


# ------------------------------------------------------------------ the helpers in one process
def test_helpers_are_the_identity_in_one_process():
    assert not distributed.is_distributed() and distributed.is_main()
    rows = np.arange(6.0).reshape(3, 2)
    assert distributed.gather_rows(rows, 3) is rows
    with pytest.raises(ValueError, match="`rows`"):
        distributed.gather_rows(rows, 4)
    tensors = [torch.ones(2), torch.zeros(())]
    assert distributed.all_reduce_mean_(tensors) is tensors and torch.equal(tensors[0], torch.ones(2))
    grads, scalars = distributed.all_reduce_gradients([None, torch.ones(2)], [torch.zeros(3), torch.zeros(2)],
                                                      torch.tensor(0.5))
    assert grads[0] is None and torch.equal(grads[1], torch.ones(2)) and float(scalars[0]) == 0.5
    inner = torch.nn.Linear(2, 2)
    assert distributed.unwrap(torch.nn.DataParallel(inner)) is inner and distributed.unwrap(inner) is inner


@pytest.mark.parametrize("n", [0, 1, 5, 16, 17])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_the_rows_in_order_and_differ_by_at_most_one(n, world):
    shares = [distributed.shard(n, rank_=r, world=world) for r in range(world)]
    assert [i for s in shares for i in range(n)[s]] == list(range(n))
    assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1
