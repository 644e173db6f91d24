"""The data-parallel ``freqlens run`` scenarios of tests/test_run_distributed.py, one process per rank.

Launched as ``python -m torch.distributed.run --standalone --nproc_per_node 2
tests/run_distributed_worker.py FOLDER``: every rank calls ``freqlens.cli.main``
with the arguments of ``freqlens run`` (what ``python -m freqlens.cli run ...``
runs), so the process group is joined from the launcher's environment by
``freqlens run`` itself, in the first run, and kept for the later ones. On the
ranks other than 0 every function that writes into ``--out`` or times the probe
plan is replaced by one that notes the call and raises, so a run in which
another rank writes or plans fails. Each rank writes ``FOLDER/rank<r>.json``:
per scenario its exit code, stdout and stderr, and the forbidden calls it made.

FOLDER holds ``ga.toml`` and ``vanilla.toml`` (tests/test_run_distributed.py
writes them). Importing this module runs nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

# What only rank 0 may call (module, attribute path): the writes into --out, the timed probe plan.
RANK_0_ONLY = [
    ("freqlens.checkpoint", "_start_out"),
    ("freqlens.checkpoint", "Checkpoint.save"),
    ("freqlens.checkpoint", "Checkpoint.delete"),
    ("freqlens.checkpoint", "Checkpoint.write_plan"),
    ("freqlens.recording.plan", "plan_probe_sets"),
    ("freqlens.recording.storage", "TrajectoryWriter.__init__"),
    ("freqlens.recording.storage", "_atomic_write"),
    ("freqlens.experiment", "write_run_outputs"),
    ("freqlens.experiment", "write_json"),
    ("freqlens.experiment", "save_defended"),
]


def _forbid(calls: list[str]) -> None:
    import importlib

    for module, path in RANK_0_ONLY:
        *owners, name = path.split(".")
        target = importlib.import_module(module)
        for owner in owners:
            target = getattr(target, owner)

        def forbidden(*args, _name=f"{module}.{path}", **kwargs):
            calls.append(_name)
            raise AssertionError(f"{_name} was called on rank {os.environ['RANK']}")

        setattr(target, name, forbidden)


def _run(argv: list[str]) -> dict:
    from freqlens.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["run", *argv, "--no-progress"])
    return {"rc": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def main(folder: Path) -> None:
    import torch

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    calls: list[str] = []
    if rank != 0:
        _forbid(calls)
    report: dict = {"calls": calls}
    report["vanilla"] = _run([str(folder / "vanilla.toml"), "--out", str(folder / "vanilla")])
    report["ga"] = _run([str(folder / "ga.toml"), "--out", str(folder / "ga")])
    report["distributed"] = torch.distributed.is_initialized() and torch.distributed.get_world_size()
    # refusals every rank makes alike: --out holds a run (rank 0 looks), a device with an index
    report["held"] = _run([str(folder / "ga.toml"), "--out", str(folder / "ga")])
    report["device"] = _run([str(folder / "vanilla.toml"), "--out", str(folder / "device"),
                             "--set", "model.device=cuda:1"])
    # last: rank 0 fails while writing; the others have returned and must not wait for it
    if rank == 0:
        import freqlens.experiment

        def full(*args, **kwargs):
            raise OSError("No space left on device (test)")

        freqlens.experiment.write_run_outputs = full
    report["write_fails"] = _run([str(folder / "vanilla.toml"), "--out", str(folder / "write-fails"),
                                  "--set", "train.epochs=1"])
    (folder / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
