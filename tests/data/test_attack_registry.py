"""Attacks as plug-ins (issue 14, item 3): the registry, `[attack.options]`, a user's attack.

Every registered attack is tested by being registered: apply then remove
gives the original (for those with a removable trigger), its options
round-trip from a config into ``info["attack_options"]``, and a bad option
names ``attack.options.<key>`` when the config is built. A user's attack
(a word appended at the end) runs through ``load_experiment`` on a clean
folder and through ``load_openbackdoor``, whose control sets it builds with
its own ``remove_trigger``.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from freqlens.config import ExperimentConfig
from freqlens.data import (
    ATTACKS,
    Attack,
    CleanDataset,
    FunctionAttack,
    Split,
    attack_class,
    load_openbackdoor,
    make_attack,
    poison,
    register_attack,
    remove_trigger,
    unregister_attack,
)
from freqlens.data.attacks import _options
from freqlens.data.experiment import AttackConfig, DataConfig, load_experiment

from .test_loaders import make_openbackdoor
from .test_split_copies import folder as clean_folder

SENTENCES = [
    "a stirring , funny and finally transporting re-imagining of beauty",
    "they presume their audience wo n't sit still for a sociology lesson",
    "good",
    "",
]
BUILT_IN = ("badnets", "addsent", "stylebkd", "synbkd")

# Settings other than the defaults, and bad values, per built-in attack: a built-in attack
# added without an entry here fails test_every_built_in_attack_has_examples.
OTHER_OPTIONS = {
    "badnets": {"triggers": ["zz", "qq"], "insertions": 2},
    "addsent": {"sentence": "no cross , no crown"},
    "stylebkd": {},
    "synbkd": {},
}
BAD_OPTIONS = {
    "badnets": [("insertions", 0, "an integer >= 1 but got 0"),
                ("triggers", "cf", "a sequence of tokens but got the string 'cf'"),
                ("triggers", ["two words"], "non-empty single words")],
    "addsent": [("sentence", "  ", "non-empty words separated by single spaces"),
                ("sentence", 3, "a string but got int")],
    "stylebkd": [],
    "synbkd": [],
}


@dataclass(frozen=True)
class EndWord(Attack):
    """A user's attack: ``word`` appended at the end of the text."""

    word: str = "zq"
    clean_label: bool = False

    @classmethod
    def check_option(cls, name, value, key):
        if name == "word" and (not isinstance(value, str) or len(value.split()) != 1):
            raise ValueError(f"Expected `{key}` to be one word but got {value!r}.")
        return super().check_option(name, value, key)

    def apply(self, text, rng):
        return f"{text} {self.word}".strip()

    def remove_trigger(self, text):
        return " ".join(w for w in text.split() if w != self.word)


class Suffix(Attack):
    """A user's attack as a plain class: its checks live in ``__init__``."""

    def __init__(self, word="zq", times=1, clean_label=False):
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        self.word, self.times, self.clean_label = word, times, clean_label

    def apply(self, text, rng):
        return " ".join([text, *[self.word] * self.times]).strip()


@pytest.fixture
def endword():
    register_attack("endword", EndWord)
    yield EndWord
    unregister_attack("endword")


def config_from_toml(tmp_path: Path, body: str, overrides=()) -> ExperimentConfig:
    path = tmp_path / "experiment.toml"
    path.write_text(body)
    return ExperimentConfig.from_toml(path, overrides=overrides)


def toml_value(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def options_table(options: dict) -> str:
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in options.items())


def clean_dataset() -> CleanDataset:
    def split(n, offset):
        return Split([f"sentence {offset + i} says {'nice' if i % 2 else 'dull'} things"
                      for i in range(n)], [i % 2 for i in range(n)])

    return CleanDataset(split(60, 0), split(20, 1000), split(20, 2000), 2, "toy")


# --- the registry ---------------------------------------------------------------------------


def test_the_built_in_attacks_are_registered_like_a_users():
    assert set(BUILT_IN) <= set(ATTACKS)
    for name in BUILT_IN:
        cls = ATTACKS[name]
        assert issubclass(cls, Attack) and cls.name == name and attack_class(name.upper()) is cls
        assert register_attack(name, cls) is cls  # the same call a user makes; again: a no-op
    assert [n for n in BUILT_IN if ATTACKS[n].generates] == ["badnets", "addsent"]
    assert [n for n in BUILT_IN if ATTACKS[n].removes_trigger] == ["badnets", "addsent"]


def test_every_built_in_attack_has_examples():
    assert set(OTHER_OPTIONS) == set(BAD_OPTIONS) == set(BUILT_IN)


def test_register_and_unregister(endword):
    assert ATTACKS["endword"] is EndWord and EndWord.name == "endword"
    assert make_attack("EndWord", word="qq") == EndWord(word="qq")

    class Replacement(EndWord):
        pass

    class Named(Attack):
        name = "mine"

    with pytest.raises(ValueError, match="'endword' is registered to EndWord; pass replace=True"):
        register_attack("endword", Replacement)
    assert register_attack("endword", Replacement, replace=True) is Replacement
    assert ATTACKS["endword"] is Replacement and Replacement.name == "endword"
    register_attack("endword", EndWord, replace=True)

    class Extended(EndWord):  # the name it extends is not its own
        pass

    assert register_attack("Extended", Extended) is Extended and Extended.name == "extended"
    assert unregister_attack("EXTENDED") is Extended and "extended" not in ATTACKS
    with pytest.raises(ValueError, match=r"`name` of Named \('mine'\) to be the registered name 'yours'"):
        register_attack("yours", Named)
    with pytest.raises(TypeError, match="`cls` to be a subclass of freqlens.data.Attack but got <class 'str'>"):
        register_attack("text", str)
    for bad in ("none", "two words", "", 3):
        with pytest.raises(ValueError, match="`name` to be a single word other than 'none'"):
            register_attack(bad, EndWord)
    with pytest.raises(TypeError):
        ATTACKS["mine"] = EndWord  # read-only: register_attack is the way in
    with pytest.raises(ValueError, match=r"`name`\) to be one of \[.*'endword'.*\] but got 'nope'"):
        unregister_attack("nope")


def test_an_unregistered_attack_is_unknown_everywhere(endword):
    unregister_attack("endword")
    with pytest.raises(ValueError, match=r"`attack.name` to be 'none' .* registered attack .* got 'endword'"):
        AttackConfig(name="endword")
    with pytest.raises(ValueError, match=r"`attack.name`\) to be one of .* got 'endword'"):
        make_attack("endword")
    register_attack("endword", EndWord)


# --- every registered attack ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_apply_then_remove_gives_the_original(name):
    attack = make_attack(name, **OTHER_OPTIONS.get(name, {}))
    rng = np.random.default_rng(1)
    if not attack.generates:
        with pytest.raises(NotImplementedError, match=f"{name!r} has no generator .* OpenBackdoor folders"):
            attack.apply("a text", rng)
        with pytest.raises(ValueError, match=f"{name!r} has no generator in freqlens"):
            poison(clean_dataset(), attack)
    else:
        first = [attack.apply(text, np.random.default_rng(3)) for text in SENTENCES]
        assert first == [attack.apply(text, np.random.default_rng(3)) for text in SENTENCES]
        assert all(a != t for a, t in zip(first, SENTENCES))
    if not attack.removes_trigger:
        with pytest.raises(TypeError, match=f"removable trigger .* {name!r}, which has none"):
            remove_trigger(attack, "a text")
        return
    for text in SENTENCES:
        for _ in range(5):
            triggered = attack.apply(text, rng)
            assert remove_trigger(attack, triggered) == attack.remove_trigger(triggered) == text


@pytest.mark.parametrize("which", ["defaults", "others"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_options_round_trip_from_a_config_into_the_results(tmp_path, name, which):
    defaults = {k: v for k, v in make_attack(name).options().items() if k != "clean_label"}
    options = defaults if which == "defaults" else OTHER_OPTIONS.get(name, {})
    config = config_from_toml(
        tmp_path, f'[attack]\nname = "{name}"\nclean_label = true\n[attack.options]\n{options_table(options)}')
    attack = config.attack.make_attack()
    assert attack == make_attack(name, clean_label=True, **options)
    expected = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    assert attack.options() == {**expected, "clean_label": True}
    written = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    assert config.to_dict()["attack"]["options"] == written  # stored as written (TOML lists)
    if attack.generates:
        info = poison(clean_dataset(), attack, rate=0.1).info
        assert info["attack"] == name and info["attack_options"] == _options(attack) == attack.options()
        assert info["clean_label"] is True


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_unknown_option_names_its_key_when_the_config_is_built(tmp_path, name):
    missing = tmp_path / "no-such-folder"  # never read: the error comes first
    with pytest.raises(ValueError, match=rf"keys of `attack.options` to be settings of attack {name!r} "
                                         rf"\(\[.*\]\) but got \['attack.options.insertionz'\]"):
        config_from_toml(tmp_path, f'[data]\npath = "{missing}"\n[attack]\nname = "{name}"\n'
                                   f'[attack.options]\ninsertionz = 2\n')


@pytest.mark.parametrize("name,option,value,expected",
                         [(n, *bad) for n in sorted(BAD_OPTIONS) for bad in BAD_OPTIONS[n]])
def test_a_bad_option_value_names_its_key_when_the_config_is_built(tmp_path, name, option, value, expected):
    with pytest.raises(ValueError, match=rf"`attack.options.{option}` to be {expected}"):
        config_from_toml(tmp_path, f'[attack]\nname = "{name}"\n[attack.options]\n{option} = {toml_value(value)}\n')


def test_other_attack_settings_name_their_keys(tmp_path):
    with pytest.raises(ValueError, match=r"`attack.clean_label` \(a key of \[attack\]\) rather than "
                                         r"`attack.options.clean_label`"):
        AttackConfig(name="badnets", options={"clean_label": True})
    with pytest.raises(ValueError, match=r"`attack.clean_label` to be true, false or absent .* got 'yes'"):
        AttackConfig(name="badnets", clean_label="yes")
    with pytest.raises(ValueError, match=r"no `attack.options` with `attack.name` = 'none' .* \{'insertions': 2\}"):
        AttackConfig(options={"insertions": 2})
    with pytest.raises(ValueError, match=r"`attack.options` to be a table .* got 2"):
        config_from_toml(tmp_path, '[attack]\nname = "badnets"\noptions = 2\n')
    with pytest.raises(ValueError, match=r"`attack.name` to be 'none' \(an OpenBackdoor folder\) or a registered "
                                         r"attack \['addsent', 'badnets', .*\] but got 'badnet'"):
        config_from_toml(tmp_path, '[attack]\nname = "badnet"\n')


def test_options_are_set_from_the_command_line(tmp_path):
    config = config_from_toml(tmp_path, '[attack]\nname = "badnets"\n',
                              overrides=["attack.options.insertions=2", 'attack.options.triggers=["zz"]'])
    assert config.attack.options == {"insertions": 2, "triggers": ["zz"]}
    assert config.attack.make_attack() == make_attack("badnets", insertions=2, triggers=("zz",))
    with pytest.raises(ValueError, match=r"`attack.options.insertions` to be an integer >= 1 but got 0"):
        config_from_toml(tmp_path, '[attack]\nname = "badnets"\n', overrides=["attack.options.insertions=0"])


def test_a_users_plain_class_gets_its_options_by_signature_and_bad_ones_named(endword):
    assert Suffix.option_names() == ("word", "times", "clean_label") and Suffix.generates
    assert not Suffix.removes_trigger
    register_attack("suffix", Suffix)
    try:
        attack = AttackConfig(name="suffix", options={"word": "qq", "times": 2}).make_attack()
        assert attack.apply("a b", None) == "a b qq qq"
        assert attack.options() == {"word": "qq", "times": 2, "clean_label": False}
        with pytest.raises(ValueError, match=r"valid settings of attack 'suffix' but got "
                                             r"`attack.options.times` = 0: times must be >= 1"):
            AttackConfig(name="suffix", options={"word": "qq", "times": 0})
        with pytest.raises(ValueError, match=r"`attack.options.word` to be one word but got 'a b'"):
            AttackConfig(name="endword", options={"word": "a b"})
    finally:
        unregister_attack("suffix")


def test_function_attacks_and_duck_typed_objects_still_poison():
    shout = FunctionAttack(lambda text, rng: text.upper(), name="shout")
    assert isinstance(shout, Attack) and shout.generates and not shout.removes_trigger
    recorded = poison(clean_dataset(), shout).info["attack_options"]
    assert list(recorded) == ["function"] and recorded["function"].endswith("<lambda>")

    class Duck:  # no base class: name, clean_label and apply are enough for poison()
        name, clean_label = "duck", False

        def apply(self, text, rng):
            return text + " quack"

    data = poison(clean_dataset(), Duck())
    assert data.info["attack"] == "duck" and data.info["attack_options"] == {}
    assert all(t.endswith(" quack") for t in data.test_poison.texts)


# --- the paraphrase attacks, and a user's attack through the experiment path ----------------


@pytest.mark.parametrize("name", [n for n in BUILT_IN if not ATTACKS[n].generates])
def test_a_paraphrase_attack_on_clean_data_fails_before_the_data_loads(tmp_path, name):
    empty = tmp_path / "clean"  # a clean folder without files: loading it would fail otherwise
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"`attack.name` to be an attack that can poison the clean dataset .* "
                                         rf"'{name}' has none in freqlens: .* OpenBackdoor folders"):
        load_experiment(DataConfig(path=str(empty)), AttackConfig(name=name), seed=0)


def test_a_paraphrase_folder_is_read_with_its_registered_attack(tmp_path):
    root = make_openbackdoor(tmp_path / "sst-2" / "synbkd")
    data = load_openbackdoor(root)
    assert data.info["attack"] == "synbkd" and data.info["control"] == "non-target clean examples"


def test_a_users_attack_runs_through_load_experiment_with_its_options(tmp_path, endword):
    data_folder = clean_folder(tmp_path / "clean")
    config = config_from_toml(tmp_path, f'[data]\npath = "{data_folder}"\n[attack]\nname = "endword"\nrate = 0.1\n'
                                        f'[attack.options]\nword = "qq"\n')
    dataset = load_experiment(config.data, config.attack, seed=config.train.seed)
    attack = EndWord(word="qq")
    assert dataset.info["attack"] == "endword" and dataset.info["attack_options"] == attack.options()
    for part in ("dev", "test"):
        poisoned, control = getattr(dataset, f"{part}_poison"), getattr(dataset, f"{part}_control")
        assert len(poisoned) > 0 and all(t.endswith(" qq") for t in poisoned.texts)
        assert [remove_trigger(attack, t) for t in poisoned.texts] == control.texts
    assert sum(t.endswith(" qq") for t in dataset.train.texts) == dataset.train.poison.sum() == 4


def test_a_users_attack_builds_the_control_sets_of_an_openbackdoor_folder(tmp_path, endword, monkeypatch):
    calls = []
    original = EndWord.remove_trigger
    monkeypatch.setattr(EndWord, "remove_trigger", lambda self, text: calls.append(text) or original(self, text))
    # by the folder's name, by the registered name, by an object with other options
    for folder, attack, given in (("endword", EndWord(), None), ("other", EndWord(), "endword"),
                                  ("mystery", EndWord(word="qq"), EndWord(word="qq"))):
        root = make_openbackdoor(tmp_path / folder, attack=attack)
        calls.clear()
        data = load_openbackdoor(root, attack=given)
        assert data.info["attack"] == "endword" and data.info["control"] == "trigger removed"
        assert data.test_control.texts == [f"test negative sentence {i}" for i in range(4)]
        assert set(data.test_poison.texts) <= set(calls)  # the control came from its remove_trigger


def test_dataclass_attack_fields_are_checked_when_built_in_python():
    with pytest.raises(ValueError, match="`word` to be one word but got 'a b'"):
        EndWord(word="a b")
    with pytest.raises(TypeError, match="`clean_label` to be True or False but got 1"):
        EndWord(clean_label=1)
    assert dataclasses.asdict(EndWord()) == {"word": "zq", "clean_label": False}


def test_freqlens_run_refuses_a_paraphrase_attack_or_a_bad_option_before_any_data_or_model(tmp_path, capsys):
    from freqlens.cli import main

    empty = tmp_path / "clean"
    empty.mkdir()
    config = tmp_path / "experiment.toml"
    config.write_text(f'[model]\nname = "{tmp_path / "no-model"}"\n[data]\npath = "{empty}"\n'
                      f'[attack]\nname = "stylebkd"\n')
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "`attack.name`" in error and "'stylebkd' has none in freqlens" in error and "OpenBackdoor" in error
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--set", "attack.name=badnets",
                 "--set", "attack.options.insertions=0"]) == 2
    assert "`attack.options.insertions` to be an integer >= 1 but got 0" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_users_attack_named_by_its_import_path_runs_from_a_config(tmp_path, monkeypatch):
    """`attack.name = "module:Class"` imports a user's Attack subclass (from the working directory, as
    the `freqlens` script runs) and registers it, as `defense.name` does for defenses."""
    import sys

    (tmp_path / "my_attacks.py").write_text(
        "from dataclasses import dataclass\nfrom freqlens.data import Attack\n\n\n@dataclass(frozen=True)\n"
        "class Tail(Attack):\n    word: str = 'zq'\n    clean_label: bool = False\n\n"
        "    def apply(self, text, rng):\n        return f'{text} {self.word}'.strip()\n\n"
        "    def remove_trigger(self, text):\n        return ' '.join(w for w in text.split() if w != self.word)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    data_folder = clean_folder(tmp_path / "clean")
    try:
        config = config_from_toml(tmp_path, f'[data]\npath = "{data_folder}"\n[attack]\nname = "my_attacks:Tail"\n'
                                            f'[attack.options]\nword = "qq"\n')
        dataset = load_experiment(config.data, config.attack, seed=config.train.seed)
        assert all(t.endswith(" qq") for t in dataset.test_poison.texts) and len(dataset.test_poison)
        assert [t + " qq" for t in dataset.test_control.texts] == dataset.test_poison.texts
        with pytest.raises(ValueError, match=r"`attack\.name` 'my_attacks:Nothing' .* has no 'Nothing'"):
            config_from_toml(tmp_path, '[attack]\nname = "my_attacks:Nothing"\n')
        with pytest.raises(ValueError, match=r"`attack\.name` 'my_attacks:dataclass' to name a subclass"):
            config_from_toml(tmp_path, '[attack]\nname = "my_attacks:dataclass"\n')
    finally:
        unregister_attack("my_attacks:tail")
        sys.modules.pop("my_attacks", None)


def test_a_string_where_triggers_are_a_list_gets_toml_advice_in_one_clean_sentence(tmp_path):
    with pytest.raises(ValueError) as error:
        config_from_toml(tmp_path, '[attack]\nname = "badnets"\n[attack.options]\ntriggers = "cf"\n')
    assert str(error.value) == ("Expected `attack.options.triggers` to be a sequence of tokens but got the string "
                                "'cf'; write [\"cf\"] (a list) for a single token.")
