"""Files freqlens writes atomically get the mode a plain ``open()`` gives (0666 less the umask), not 0600."""

from __future__ import annotations

import os
import stat
import sys

import numpy as np
import pytest

from freqlens.recording.storage import TrajectoryWriter, write_json, write_npz

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _written_files(directory):
    """Every kind of file storage writes: JSON, NPZ, and a trajectory's meta, probes and snapshots."""
    write_json(directory / "results.json", {"cacc": 0.5})
    write_npz(directory / "arrays.npz", {"a": np.zeros(3)})
    writer = TrajectoryWriter(directory / "trajectory")
    writer.write_probe("clean", inputs=np.zeros((2, 3)), labels=np.array([0, 1]), texts=["a", "b"])
    writer.write_snapshot(0, {"clean": np.full((2, 2), 0.5)})
    writer.close()
    return [p for p in directory.rglob("*") if p.is_file()]


def test_every_atomically_written_file_has_the_umask_mode(tmp_path, umask):
    reference = tmp_path / "plain.txt"
    with open(reference, "w") as file:  # what any other program would create
        file.write("x")
    expected = _mode(reference)
    assert expected == 0o666 & ~umask
    out = tmp_path / "out"
    files = _written_files(out)
    names = sorted(p.relative_to(out).as_posix() for p in files)
    assert names == ["arrays.npz", "results.json", "trajectory/meta.json", "trajectory/probes/clean.json",
                     "trajectory/probes/clean.npz", "trajectory/snapshots/step-000000000.npz"]
    assert {p.relative_to(out).as_posix(): oct(_mode(p)) for p in files} == {n: oct(expected) for n in names}


def test_rewriting_a_file_keeps_the_umask_mode_and_leaves_no_temporary(tmp_path, umask):
    path = tmp_path / "results.json"
    for value in (1, 2):
        write_json(path, {"value": value})
    assert _mode(path) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
