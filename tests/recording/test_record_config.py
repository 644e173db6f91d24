"""RecordConfig: every bad value is refused naming its `record.<key>`; the defaults ask for a
spectrum (issue 13); the shipped SST-2 configs do not override them away."""

from __future__ import annotations

from pathlib import Path

import pytest

from freqlens.config import ExperimentConfig, RecordConfig

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"


@pytest.mark.parametrize(("key", "value", "match"), [
    ("schedule", "weekly", r"`record.schedule`"),
    ("probe_size", 0, r"`record.probe_size` to be 'auto' or an integer >= 1 but got 0"),
    ("probe_size", "many", r"`record.probe_size`"),
    ("budget", 0.0, r"`record.budget` in \(0, 1\) but got 0.0"),
    ("budget", 1.0, r"`record.budget`"),
    ("min_probe_size", 0, r"`record.min_probe_size` to be an integer >= 1 but got 0"),
    ("min_snapshots", 2, r"`record.min_snapshots` to be an integer >= 3 but got 2"),
    ("max_probe_size", 64, r"`record.max_probe_size` to be an integer >= 128 but got 64"),
    ("batch_size", 0, r"`record.batch_size`"),
    ("input_spaces", ["flattened", "pooled"], r"`record.input_spaces` to be one of the built-in spaces "
                                              r"\('flattened', 'mean-pooled', 'hidden:K'\).* but got 'pooled'"),
    ("input_spaces", "flattened", r"`record.input_spaces` to be a non-empty list"),
    ("input_spaces", [], r"`record.input_spaces` to be a non-empty list"),
    ("input_spaces", ["hidden:-1", "hidden:-1"], r"`record.input_spaces` to name each input space once"),
    ("input_spaces", ["no_such_package_x.spaces:f"],
     r"`record.input_spaces` 'no_such_package_x.spaces:f' to name an importable module"),
    ("precision", "float16", r"`record.precision` to be one of \('auto', 'float32', 'bfloat16'\) but got "
                             r"'float16'"),
])
def test_bad_values_name_their_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        RecordConfig(**{key: value})
    with pytest.raises(ValueError, match=match):
        ExperimentConfig.from_dict({"record": {key: value}})


def test_the_defaults_ask_for_a_spectrum():
    record = RecordConfig()
    assert record.probe_size == "auto" and record.min_probe_size >= 128 and record.min_snapshots >= 20
    assert record.schedule.startswith("log:") and 0.1 <= record.budget <= 0.2
    assert record.input_spaces == ["flattened", "mean-pooled", "hidden:-1"]
    assert record.precision == "float32"


def test_input_spaces_and_precision_come_from_a_config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[record]\ninput_spaces = ["mean-pooled", "hidden:0"]\nprecision = "float32"\n')
    config = ExperimentConfig.from_toml(path, overrides=["record.budget=0.1"])
    assert config.record.input_spaces == ["mean-pooled", "hidden:0"] and config.record.precision == "float32"
    assert config.to_dict()["record"]["input_spaces"] == ["mean-pooled", "hidden:0"]
    config = ExperimentConfig.from_toml(path, overrides=['record.input_spaces=["flattened"]'])
    assert config.record.input_spaces == ["flattened"]


@pytest.mark.parametrize("path", sorted(ANALYSIS.glob("sst2-*.toml")), ids=lambda p: p.name)
def test_the_shipped_sst2_configs_keep_the_spectrum_defaults(path):
    record = ExperimentConfig.from_toml(path).record
    defaults = RecordConfig()
    assert record.min_probe_size >= defaults.min_probe_size and record.min_snapshots >= defaults.min_snapshots
    assert record.budget >= defaults.budget and record.probe_size == "auto"
