"""Trajectory files: the writer, the loader, atomic writes, no pickle."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from freqlens.recording import TrajectoryWriter, load_trajectory
from freqlens.recording.storage import FORMAT, VERSION, _atomic_write, write_json, write_npz

RNG = np.random.default_rng(0)
CLEAN_INPUTS = RNG.normal(size=(4, 6))  # float64 on purpose: stored as float32
BACKDOOR_INPUTS = RNG.normal(size=(3, 6))


def probabilities(n: int, seed: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(n, 2))
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


OUTPUTS = {
    step: {"clean": probabilities(4, step), "backdoor": probabilities(3, 100 + step)}
    for step in (0, 5, 10)
}


def write_sample(directory: Path, *, close: bool = True) -> TrajectoryWriter:
    """Two probe sets and three snapshots (scalars: epoch everywhere, loss at step 5 only)."""
    writer = TrajectoryWriter(directory)
    writer.write_probe(
        "clean",
        inputs=CLEAN_INPUTS,
        labels=np.array([0, 1, 1, 0]),
        texts=["a", "b", "c", "d"],
        role="clean",
    )
    writer.write_probe("backdoor", inputs=BACKDOOR_INPUTS, labels=np.ones(3), poison=np.ones(3, bool))
    writer.update_meta(schedule="steps:0,5,10", model="Tiny")
    writer.write_snapshot(0, OUTPUTS[0], epoch=0.0)
    writer.write_snapshot(5, OUTPUTS[5], epoch=0.5, loss=0.7)
    writer.write_snapshot(10, OUTPUTS[10], epoch=1.0, loss=None)  # None: not stored
    if close:
        writer.close(snapshots=3)
    return writer


def snapshot_files(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "snapshots").iterdir())


def test_round_trip(tmp_path):
    write_sample(tmp_path)
    trajectory = load_trajectory(tmp_path)

    assert trajectory.steps.tolist() == [0, 5, 10]
    assert trajectory.steps.dtype == np.int64
    assert trajectory.names == ["clean", "backdoor"]
    assert trajectory.inputs["clean"].dtype == np.float32
    np.testing.assert_array_equal(trajectory.inputs["clean"], CLEAN_INPUTS.astype(np.float32))
    np.testing.assert_array_equal(trajectory.inputs["backdoor"], BACKDOOR_INPUTS.astype(np.float32))
    assert trajectory.labels["clean"].tolist() == [0, 1, 1, 0]
    assert trajectory.labels["backdoor"].dtype == np.int64
    assert trajectory.poison["clean"].tolist() == [False] * 4
    assert trajectory.poison["backdoor"].tolist() == [True] * 3
    assert trajectory.texts == {"clean": ["a", "b", "c", "d"]}
    for name, n in (("clean", 4), ("backdoor", 3)):
        outputs = trajectory.outputs[name]
        assert outputs.shape == (3, n, 2) and outputs.dtype == np.float32
        expected = np.stack([OUTPUTS[step][name] for step in (0, 5, 10)]).astype(np.float32)
        np.testing.assert_array_equal(outputs, expected)
    assert trajectory.num_classes == 2
    assert trajectory.complete
    assert trajectory.directory == tmp_path
    meta = trajectory.meta
    assert meta["format"] == FORMAT and meta["version"] == VERSION
    assert meta["status"] == "complete" and meta["snapshots"] == 3 and meta["model"] == "Tiny"
    assert meta["probe_sets"] == {
        "clean": {"n": 4, "dim": 6, "role": "clean"},
        "backdoor": {"n": 3, "dim": 6, "role": "backdoor"},
    }
    assert repr(trajectory) == (
        "Trajectory(steps=3 from [0] to [10], probe sets {clean: 4, backdoor: 3}, status='complete')"
    )


def test_scalars_are_nan_where_missing(tmp_path):
    write_sample(tmp_path)
    scalars = load_trajectory(tmp_path).scalars
    assert sorted(scalars) == ["epoch", "loss"]
    np.testing.assert_array_equal(scalars["epoch"], [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(scalars["loss"], [np.nan, 0.7, np.nan])


def test_snapshots_load_in_step_order(tmp_path):
    writer = TrajectoryWriter(tmp_path)
    writer.write_probe("clean", inputs=np.zeros((2, 3)), labels=np.zeros(2))
    for step in (100, 20, 3):
        writer.write_snapshot(step, {"clean": np.full((2, 2), step / 200)})
    trajectory = load_trajectory(tmp_path)
    assert trajectory.steps.tolist() == [3, 20, 100]
    np.testing.assert_allclose(trajectory.outputs["clean"][:, 0, 0], [3 / 200, 20 / 200, 100 / 200])


def test_unclosed_trajectory_loads_as_incomplete(tmp_path):
    write_sample(tmp_path, close=False)
    trajectory = load_trajectory(tmp_path)
    assert trajectory.meta["status"] == "recording"
    assert not trajectory.complete
    assert trajectory.steps.tolist() == [0, 5, 10]


def test_failed_status(tmp_path):
    writer = write_sample(tmp_path, close=False)
    writer.close("failed")
    trajectory = load_trajectory(tmp_path)
    assert trajectory.meta["status"] == "failed" and not trajectory.complete


def test_existing_trajectory_is_refused_without_overwrite(tmp_path):
    write_sample(tmp_path)
    with pytest.raises(FileExistsError, match=r"meta\.json exists.*overwrite=True"):
        TrajectoryWriter(tmp_path)
    assert load_trajectory(tmp_path).steps.tolist() == [0, 5, 10]  # untouched


def test_overwrite_replaces_the_snapshots(tmp_path):
    write_sample(tmp_path)
    writer = TrajectoryWriter(tmp_path, overwrite=True)
    writer.write_probe("clean", inputs=np.ones((4, 6)), labels=np.zeros(4), texts=list("wxyz"))
    writer.write_snapshot(7, {"clean": probabilities(4, 7)})
    writer.close()
    trajectory = load_trajectory(tmp_path)
    assert trajectory.steps.tolist() == [7]
    assert trajectory.names == ["clean"]
    assert trajectory.texts == {"clean": list("wxyz")}
    np.testing.assert_array_equal(trajectory.inputs["clean"], np.ones((4, 6), np.float32))


def test_overwrite_drops_old_texts(tmp_path):
    write_sample(tmp_path)  # "clean" has 4 texts
    writer = TrajectoryWriter(tmp_path, overwrite=True)
    writer.write_probe("clean", inputs=np.ones((2, 6)), labels=np.zeros(2))  # no texts this time
    writer.write_snapshot(0, {"clean": probabilities(2, 0)})
    assert "clean" not in load_trajectory(tmp_path).texts


def test_load_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing / "meta.json"))):
        load_trajectory(missing)


def edit_meta(directory: Path, **fields) -> None:
    path = directory / "meta.json"
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"format": "something.else"}, r"format 'freqlens\.trajectory' but got 'something\.else'"),
        ({"format": None}, r"format .* but got None"),
        ({"version": VERSION + 1}, rf"version <= {VERSION} .* version {VERSION + 1}: upgrade freqlens"),
    ],
)
def test_foreign_or_newer_meta_is_refused(tmp_path, fields, match):
    write_sample(tmp_path)
    edit_meta(tmp_path, **fields)
    with pytest.raises(ValueError, match=match):
        load_trajectory(tmp_path)


def test_no_snapshot_is_an_error(tmp_path):
    writer = TrajectoryWriter(tmp_path)
    writer.write_probe("clean", inputs=np.zeros((2, 3)), labels=np.zeros(2))
    with pytest.raises(ValueError, match=r"at least one snapshot in .*snapshots"):
        load_trajectory(tmp_path)


def test_stray_temporary_files_are_ignored(tmp_path):
    write_sample(tmp_path)
    # what a process killed in the middle of _atomic_write leaves behind
    (tmp_path / "snapshots" / ".step-000000015.npz.k2j3h4.tmp").write_bytes(b"PK\x03\x04 half a zip")
    (tmp_path / "probes" / ".clean.npz.abc123.tmp").write_bytes(b"")
    (tmp_path / ".meta.json.x1y2.tmp").write_text("{")
    trajectory = load_trajectory(tmp_path)
    assert trajectory.steps.tolist() == [0, 5, 10]
    assert trajectory.complete


def test_unreadable_snapshot_is_skipped_with_a_warning(tmp_path):
    write_sample(tmp_path)
    (tmp_path / "snapshots" / "step-000000007.npz").write_bytes(b"not a zip file at all")
    with pytest.warns(RuntimeWarning, match=r"Skipping unreadable snapshot .*step-000000007"):
        trajectory = load_trajectory(tmp_path)
    assert trajectory.steps.tolist() == [0, 5, 10]


def test_truncated_snapshot_is_skipped_with_a_warning(tmp_path):
    write_sample(tmp_path)
    path = tmp_path / "snapshots" / "step-000000010.npz"
    path.write_bytes(path.read_bytes()[:-40])  # e.g. a live trajectory copied mid-write
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trajectory = load_trajectory(tmp_path)
    assert trajectory.steps.tolist() == [0, 5]
    assert any("Skipping unreadable snapshot" in str(w.message) for w in caught)


def test_snapshot_lacking_a_probe_set_is_skipped_with_a_warning(tmp_path):
    writer = write_sample(tmp_path)
    writer.write_snapshot(20, {"clean": probabilities(4, 20)})  # no "backdoor"
    with pytest.warns(RuntimeWarning, match=r"step-000000020\.npz: it lacks a probe set"):
        trajectory = load_trajectory(tmp_path)
    assert trajectory.steps.tolist() == [0, 5, 10]


def test_every_npz_loads_without_pickle(tmp_path):
    write_sample(tmp_path)
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 2 + 3  # two probe sets, three snapshots
    for path in files:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                assert data[key].dtype != object, (path, key)
    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text())  # plain JSON


def test_meta_accepts_numpy_and_paths(tmp_path):
    writer = TrajectoryWriter(tmp_path)
    writer.update_meta(count=np.int64(3), scale=np.float32(0.5), values=np.arange(3), where=tmp_path / "x")
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["count"] == 3 and meta["scale"] == 0.5 and meta["values"] == [0, 1, 2]
    assert meta["where"] == str(tmp_path / "x")
    with pytest.raises(TypeError, match="object is not JSON serialisable|not JSON serialisable"):
        writer.update_meta(bad=object())


def test_meta_is_strict_json(tmp_path):
    writer = TrajectoryWriter(tmp_path)
    writer.update_meta(loss=float("nan"), values=np.array([1.0, np.inf]), nested={"x": -np.inf})
    text = (tmp_path / "meta.json").read_text()
    meta = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))
    assert meta["loss"] is None and meta["values"] == [1.0, None] and meta["nested"] == {"x": None}


# --------------------------------------------------------------- atomic writes
def test_atomic_write_leaves_only_the_target(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    _atomic_write(target, lambda f: f.write(b"hello"))
    assert target.read_bytes() == b"hello"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_atomic_write_leaves_nothing(tmp_path, error):
    target = tmp_path / "file.bin"

    def write(file):
        file.write(b"half of it")
        raise error

    with pytest.raises(type(error)):
        _atomic_write(target, write)
    assert list(tmp_path.iterdir()) == []


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "meta.json"
    write_json(target, {"version": 1})

    def write(file):
        file.write(b'{"trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic_write(target, write)
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


class Exploding:
    """Array-like that fails when np.savez converts it (after earlier members are written)."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("conversion failed")


def test_failed_npz_write_leaves_nothing(tmp_path):
    target = tmp_path / "snapshots" / "step-000000001.npz"
    with pytest.raises(RuntimeError, match="conversion failed"):
        write_npz(target, {"good": np.zeros(1000), "bad": Exploding()})
    assert list(target.parent.iterdir()) == []
