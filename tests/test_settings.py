"""Typed settings: nested tables, `--set a.b.c=value` at any depth, every key listed with its meaning."""

from __future__ import annotations

import dataclasses
import sys
from typing import ClassVar

import pytest

from freqlens.cli import main
from freqlens.config import ExperimentConfig, list_settings
from freqlens.defenses import GAConfig
from freqlens.defenses.registry import FLAT_KEYS, DefenseConfig
from freqlens.settings import apply_override, build, describe, field_comments

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclasses.dataclass(frozen=True)
class Inner:
    depth: int = 1  # how deep

    def __post_init__(self):
        if self.depth < 0:
            raise ValueError(f"Expected `outer.inner.depth` >= 0 but got {self.depth}.")


@dataclasses.dataclass(frozen=True)
class Outer:
    RENAMED: ClassVar[dict[str, str]] = {"inner_depth": "inner.depth"}

    name: str = "x"  # a name
    inner: Inner = dataclasses.field(default_factory=Inner)  # the nested table


def test_build_makes_nested_tables_and_names_unknown_keys_in_dotted_form():
    assert build(Outer, {"inner": {"depth": 3}}, "outer") == Outer(inner=Inner(depth=3))
    unknown = r"Unknown config key\(s\) \['outer\.inner\.deep'\]; `outer\.inner` has \['depth'\]"
    with pytest.raises(ValueError, match=unknown):
        build(Outer, {"inner": {"deep": 3}}, "outer")
    with pytest.raises(ValueError, match=r"`outer\.inner` to be a table of settings \(outer\.inner\.depth\) but got 3"):
        build(Outer, {"inner": 3}, "outer")
    with pytest.raises(ValueError, match=r"`outer\.inner_depth` is now `outer\.inner\.depth`"):
        build(Outer, {"inner_depth": 3}, "outer")
    with pytest.raises(ValueError, match=r"`outer\.inner\.depth` >= 0"):
        build(Outer, {"inner": {"depth": -1}}, "outer")


def test_apply_override_at_any_depth():
    data = {"defense": {"name": "muscle"}}
    assert apply_override(data, "defense.ga.mu=0.2") == ("defense", "ga", "mu")
    assert apply_override(data, "a.b.c.d=[1, 2]") == ("a", "b", "c", "d")
    assert apply_override(data, "model.name=prajjwal1/bert-tiny") == ("model", "name")
    assert data == {"defense": {"name": "muscle", "ga": {"mu": 0.2}}, "a": {"b": {"c": {"d": [1, 2]}}},
                    "model": {"name": "prajjwal1/bert-tiny"}}
    with pytest.raises(ValueError, match=r"`defense\.name` to be a table .* holds the value 'muscle'"):
        apply_override(data, "defense.name.x=1")
    for bad in ("defense=1", "defense.ga.mu", "defense..mu=1", ".mu=1"):
        with pytest.raises(ValueError, match="section.key=value"):
            apply_override({}, bad)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "experiment.toml"
    path.write_text('[data]\npath = "./data"\n[defense]\nname = "muscle"\n[defense.mslr]\nbands = [1, 2]\n')
    return path


def test_nested_overrides_reach_each_component(config_file):
    config = ExperimentConfig.from_toml(config_file, overrides=[
        "defense.ga.mu=0.2", "defense.lora.r=4", "defense.mslr.rank=2", "defense.abl.gamma=0.3",
        "defense.prefix.tokens=3", "defense.ga.pure=true"])
    defense = config.defense
    assert (defense.ga.mu, defense.ga.pure, defense.lora.r, defense.mslr.rank, defense.mslr.bands,
            defense.abl.gamma, defense.prefix.tokens) == (0.2, True, 4, 2, (1.0, 2.0), 0.3, 3)
    assert config.data.path == str(config_file.parent / "data")  # relative paths still resolve
    assert ExperimentConfig.from_dict(config.to_dict()) == config  # the stored (nested) form reads back


@pytest.mark.parametrize("old, new", sorted(FLAT_KEYS.items()))
def test_the_flat_keys_of_earlier_versions_name_their_new_key(config_file, old, new):
    message = rf"`defense\.{old}` is now `defense\.{new.replace('.', chr(92) + '.')}`"
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_toml(config_file, overrides=[f"defense.{old}=1"])
    text = config_file.read_text().replace('name = "muscle"\n', f'name = "muscle"\n{old} = 1\n')
    config_file.write_text(text)
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_toml(config_file)


def test_every_setting_of_every_section_has_a_meaning():
    found = list_settings()
    missing = [s.key for s in found if not s.meaning]
    assert not missing, f"settings without a meaning (a trailing comment on the field): {missing}"
    keys = [s.key for s in found]
    shared = [k for k in keys if not k.startswith("defense.options.")]
    assert len(shared) == len(set(shared))
    # defenses' own options may share a name (`restart`); each is listed once per defense, named by it
    options = [(s.key, s.meaning.partition(")")[0]) for s in found if s.key.startswith("defense.options.")]
    assert len(options) == len(set(options)) and all(meaning.startswith("(defense ") for _, meaning in options)
    for section in dataclasses.fields(ExperimentConfig):  # every field, nested tables expanded
        assert [s.key for s in describe(section.default_factory, section.name)
                if s.key != "defense.options"] == [k for k in keys if k.startswith(f"{section.name}.")
                                                   and not k.startswith("defense.options.")]
    assert {"defense.ga.mu", "defense.lora.r", "defense.mslr.bands", "defense.abl.gamma",
            "defense.prefix.tokens", "train.epochs"} <= set(keys)


def test_the_meaning_is_the_fields_trailing_comment():
    assert field_comments(Outer) == {"name": "a name", "inner": "the nested table"}
    assert field_comments(DefenseConfig)["reference_size"].startswith("clean reference examples")
    assert field_comments(GAConfig)["mu"].startswith("the weight of the raw gradient")


def test_list_keys_prints_every_setting_with_its_default(capsys):
    assert main(["run", "--list-keys"]) == 0  # no CONFIG, no --out
    lines = capsys.readouterr().out.splitlines()
    assert lines == [s.line() for s in list_settings()]
    by_key = {line.partition(" = ")[0]: line for line in lines}
    assert by_key["defense.ga.mu"].startswith("defense.ga.mu = 0.1  # ")
    assert by_key["defense.lora.targets"].startswith("defense.lora.targets = []  # ")
    assert by_key["defense.name"].startswith('defense.name = "vanilla"  # ')
    for line in lines:  # the default is TOML (None aside), so it can be pasted into a config
        _, _, rest = line.partition(" = ")
        value = rest.partition("  # ")[0]
        if value != "None":
            tomllib.loads(f"value = {value}")


@pytest.mark.parametrize("value", ["0", "false", '""', "[]", "3"])
def test_defense_options_that_are_no_table_are_refused(tmp_path, value):
    """``options or {}`` once let a falsy value through as "no options"; attack.options refused it."""
    path = tmp_path / "experiment.toml"
    path.write_text('[defense]\nname = "vanilla"\n')
    with pytest.raises(ValueError, match=r"`defense\.options` to be a table of the defense's own settings"):
        ExperimentConfig.from_toml(path, overrides=[f"defense.options={value}"])


def test_reading_a_stored_config_never_imports_the_code_it_names(tmp_path, monkeypatch):
    """`freqlens report` upgrades each run's stored config; a `module:Class` defense in it must not be imported."""
    (tmp_path / "planted_defense.py").write_text("import pathlib\npathlib.Path(__file__).with_suffix('.ran').touch()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stored = {"defense": {"name": "planted_defense:Anything", "ga_mu": 0.2}, "train": {"epochs": 1}}
    upgraded = ExperimentConfig.upgrade(stored)
    assert not (tmp_path / "planted_defense.ran").exists()
    assert upgraded["defense"] == {"name": "planted_defense:Anything", "ga": {"mu": 0.2}}  # nested, kept
    assert upgraded["train"]["epochs"] == 1 and upgraded["train"]["batch_size"] == 32  # completed with defaults


def test_run_without_config_or_out_names_what_is_missing(capsys):
    assert main(["run", "--out", "somewhere"]) == 2
    assert "Expected CONFIG for `freqlens run` (or --list-keys" in capsys.readouterr().err
    assert main(["run", "config.toml"]) == 2
    assert "Expected --out for `freqlens run`" in capsys.readouterr().err
