"""A recording process killed with SIGKILL keeps every snapshot it finished."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from freqlens.recording import load_trajectory

TESTS = Path(__file__).resolve().parents[1]
TIMEOUT = 120.0  # seconds: the test can never hang longer
WANTED = 5  # snapshots reported by the child before it is killed

CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    import torch
    torch.set_num_threads(1)
    from models import random_encodings, random_labels, tiny_bert
    from freqlens.recording import ProbeSet, Recorder

    model = tiny_bert()
    probes = [
        ProbeSet("clean", random_encodings(16, 12, seed=1, pad_from=4), random_labels(16)),
        ProbeSet("backdoor", random_encodings(8, 12, seed=2, pad_from=6), [1] * 8, poison=[True] * 8),
    ]
    batch, labels = random_encodings(8, 12, seed=3, pad_from=5), random_labels(8, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    recorder = Recorder(sys.argv[1], probes, schedule="every:1")
    recorder.start(model)
    print(0, flush=True)
    deadline = time.monotonic() + 300  # never outlive a broken parent for long
    step = 0
    while time.monotonic() < deadline:
        step += 1
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if recorder.step(step, loss=float(loss)):
            print(step, flush=True)
    """
)


def read_steps(process: subprocess.Popen, wanted: int, deadline: float) -> list[int]:
    """Steps the child reported on stdout, until ``wanted`` of them or the deadline."""
    buffer, steps = b"", []
    fd = process.stdout.fileno()
    while len(steps) < wanted:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"the child reported only {steps} within {TIMEOUT} s")
        ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if not ready:
            if process.poll() is not None:
                pytest.fail(f"the child exited early (code {process.returncode}) after {steps}")
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            process.wait(timeout=10)
            pytest.fail(f"the child closed stdout (code {process.returncode}) after {steps}")
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        steps += [int(line) for line in lines if line.strip()]
    return steps


@pytest.mark.slow  # a fresh interpreter importing torch and transformers
@pytest.mark.skipif(sys.platform == "win32", reason="select() on pipes and SIGKILL are POSIX")
def test_sigkill_keeps_every_finished_snapshot(tmp_path):
    directory = tmp_path / "trajectory"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(script), str(directory), str(TESTS)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
        try:
            reported = read_steps(process, WANTED, time.monotonic() + TIMEOUT)
            process.kill()  # SIGKILL: no cleanup, no atexit, no finally
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
            process.stdout.close()
    assert process.returncode == -9, (tmp_path / "stderr.txt").read_text()[-2000:]

    trajectory = load_trajectory(directory)  # no exception, no warning needed
    assert len(reported) >= WANTED
    assert reported == list(range(len(reported)))
    assert set(reported) <= set(trajectory.steps.tolist())
    assert len(trajectory.steps) >= WANTED
    assert not trajectory.complete and trajectory.meta["status"] == "recording"
    for name, outputs in trajectory.outputs.items():
        assert outputs.shape[0] == len(trajectory.steps)
        assert np.all(np.isfinite(outputs)), name
        np.testing.assert_allclose(outputs.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(trajectory.inputs["clean"]))
    # the loss scalars of the finished snapshots are there too (NaN only at step 0)
    assert np.all(np.isfinite(trajectory.scalars["loss"][1:]))
