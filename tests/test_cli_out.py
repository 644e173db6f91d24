"""An --out that already holds a run: the CLI says so at once, in its own flags.

It used to tell a command-line user to pass `overwrite=True` (a Python
argument), and only after the data and the model had loaded.
"""

from __future__ import annotations

import pytest

import freqlens.demo.run
import freqlens.experiment
from freqlens.cli import main
from freqlens.recording.storage import TrajectoryWriter


@pytest.fixture
def used_out(tmp_path):
    out = tmp_path / "out"
    (out / "trajectory").mkdir(parents=True)
    (out / "trajectory" / "meta.json").write_text("{}")
    return out


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\nname = "./model"\n[data]\npath = "./data"\nformat = "clean"\n')
    return path


def _nothing_runs(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    for name in ("load_experiment", "load_model", "record_and_analyse"):
        monkeypatch.setattr(freqlens.experiment, name, fail)
    monkeypatch.setattr(freqlens.demo.run, "record_and_analyse", fail)


def test_run_into_a_used_out_names_the_flags_before_loading(used_out, config_file, monkeypatch, capsys):
    _nothing_runs(monkeypatch)
    assert main(["run", str(config_file), "--out", str(used_out), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "--overwrite" in error and "--resume" in error and str(used_out) in error
    assert "overwrite=True" not in error and error.count("\n") == 1


def test_demo_into_a_used_out_names_the_flag_before_training(used_out, monkeypatch, capsys):
    _nothing_runs(monkeypatch)
    assert main(["demo", "--quick", "--out", str(used_out), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "--overwrite" in error and "overwrite=True" not in error


def test_the_python_advice_of_the_recorder_is_put_in_cli_flags(tmp_path, config_file, monkeypatch, capsys):
    """Wherever the refusal comes from (here the trajectory writer itself), the CLI speaks in flags."""
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "meta.json").write_text("{}")

    def refuse(*args, **kwargs):
        TrajectoryWriter(tmp_path / "t")

    monkeypatch.setattr(freqlens.experiment, "run_experiment", refuse)
    assert main(["run", str(config_file), "--out", str(tmp_path / "fresh"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "meta.json exists" in error and "--overwrite" in error and "overwrite=True" not in error
