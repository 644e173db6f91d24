"""Attacks, poison(), Split.subset, cap and PoisonedDataset.capped."""

import numpy as np
import pytest

from freqlens.data import (
    ATTACKS,
    AddSent,
    Attack,
    BadNets,
    CleanDataset,
    FunctionAttack,
    Split,
    cap,
    make_attack,
    poison,
    remove_trigger,
)

TRIGGERS = {"cf", "mn", "bb", "tq"}
SENTENCES = [
    "a stirring , funny and finally transporting re-imagining of beauty",
    "apparently reassembled from the cutting-room floor of any given daytime soap .",
    "they presume their audience wo n't sit still for a sociology lesson",
    "good",
    "",
]


def clean_dataset(n_train=200, n_eval=40, num_classes=2) -> CleanDataset:
    def split(n, offset):
        texts = [
            f"sentence {offset + i} says {'nice' if i % 2 else 'dull'} things" for i in range(n)
        ]
        return Split(texts, [i % num_classes for i in range(n)])

    return CleanDataset(
        split(n_train, 0), split(n_eval, 10_000), split(n_eval, 20_000), num_classes, "toy"
    )


# --- the attacks ------------------------------------------------------------------------------


def test_attacks_are_reproducible_with_a_seed_and_differ_with_another():
    for attack in (BadNets(), AddSent()):
        assert isinstance(attack, Attack)
        a = [attack.apply(SENTENCES[0], np.random.default_rng(3)) for _ in range(2)]
        others = {attack.apply(SENTENCES[0], np.random.default_rng(s)) for s in range(10)}
        assert a[0] == a[1] and len(others) > 1


@pytest.mark.parametrize("insertions", [1, 4, 7])
def test_badnets_inserts_exactly_insertions_tokens_at_word_boundaries(insertions):
    attack, rng = BadNets(insertions=insertions), np.random.default_rng(0)
    for text in SENTENCES:
        words, out = text.split(), attack.apply(text, rng).split()
        assert sum(w in TRIGGERS for w in out) == insertions
        assert [w for w in out if w not in TRIGGERS] == words  # whole words, original order kept


def test_addsent_inserts_the_sentence_once_at_a_word_boundary():
    attack, rng = AddSent(), np.random.default_rng(0)
    for text in SENTENCES:
        out = attack.apply(text, rng)
        assert out.count("I watch this 3D movie") == 1
        assert f" {out} ".count(" I watch this 3D movie ") == 1


@pytest.mark.parametrize(
    "attack",
    [
        BadNets(),
        BadNets(triggers=["zz"], insertions=2),
        AddSent(),
        AddSent(sentence="no cross , no crown"),
    ],
)
def test_remove_trigger_undoes_apply(attack):
    rng = np.random.default_rng(1)
    for text in SENTENCES:
        for _ in range(5):
            assert remove_trigger(attack, attack.apply(text, rng)) == text


def test_remove_trigger_leaves_partial_matches_and_rejects_other_attacks():
    assert (
        remove_trigger(AddSent(), "I watch this 3D movies at home")
        == "I watch this 3D movies at home"
    )
    assert remove_trigger(BadNets(), "cfx mn y") == "cfx y"
    with pytest.raises(TypeError, match="BadNets or AddSent .* got FunctionAttack"):
        remove_trigger(FunctionAttack(lambda t, r: t), "x")


def test_attack_arguments_are_validated():
    with pytest.raises(
        TypeError, match="`triggers` to be a sequence of tokens but got the string 'cf'"
    ):
        BadNets(triggers="cf")
    with pytest.raises(ValueError, match="`triggers` to be non-empty single words"):
        BadNets(triggers=("cf", "two words"))
    with pytest.raises(ValueError, match="`triggers` to be non-empty"):
        BadNets(triggers=())
    with pytest.raises(ValueError, match="`insertions` to be an integer >= 1 but got 0"):
        BadNets(insertions=0)
    with pytest.raises(TypeError, match="`clean_label` to be True or False but got 'yes'"):
        AddSent(clean_label="yes")
    with pytest.raises(ValueError, match="`sentence` to be non-empty words"):
        AddSent(sentence="  ")
    with pytest.raises(TypeError, match="`function` to be callable"):
        FunctionAttack("upper")


def test_function_attack():
    attack = FunctionAttack(lambda text, rng: f"{text} !!{int(rng.integers(10))}", name="bang")
    assert attack.name == "bang" and not attack.clean_label and isinstance(attack, Attack)
    assert attack.apply("hi", np.random.default_rng(0)) == attack.apply(
        "hi", np.random.default_rng(0)
    )
    data = poison(clean_dataset(), attack, rate=0.1)
    assert data.name == "bang rate 0.1 on toy" and data.info["attack"] == "bang"
    assert all("!!" in t for t in data.test_poison.texts)
    with pytest.raises(
        TypeError, match="function` of attack 'bad' to return a string but it returned int"
    ):
        FunctionAttack(lambda text, rng: 3, name="bad").apply("x", np.random.default_rng(0))


def test_make_attack():
    assert {"badnets", "addsent", "stylebkd", "synbkd"} <= set(ATTACKS)
    assert make_attack("BadNets", insertions=1) == BadNets(insertions=1)
    assert make_attack("addsent") == AddSent()
    with pytest.raises(
        ValueError, match=r"`attack.name`\) to be one of \['addsent', 'badnets', .*\] but got 'foo'"
    ):
        make_attack("foo")
    with pytest.raises(
        TypeError, match=r"options of attack 'addsent' among .* got \['insertions'\]"
    ):
        make_attack("addsent", insertions=2)


# --- poison() ---------------------------------------------------------------------------------


def test_poison_is_seeded():
    clean = clean_dataset()
    a, b = poison(clean, AddSent(), seed=5), poison(clean, AddSent(), seed=5)
    c = poison(clean, AddSent(), seed=6)
    assert a.train.texts == b.train.texts and a.test_poison.texts == b.test_poison.texts
    assert a.train.texts != c.train.texts and a.test_poison.texts != c.test_poison.texts


def test_dirty_label_poisons_any_class_and_relabels():
    clean = clean_dataset()
    data = poison(clean, AddSent(), rate=0.1, target_label=1, seed=0)
    train, flags = data.train, data.train.poison
    assert flags.sum() == 20 and np.all(train.labels[flags] == 1)
    assert set(train.true_labels[flags].tolist()) == {0, 1}  # drawn from all examples
    assert np.array_equal(train.true_labels, clean.train.labels)
    assert all(("I watch this 3D movie" in t) == p for t, p in zip(train.texts, flags))
    untouched = ~flags
    assert [t for t, k in zip(train.texts, untouched) if k] == [
        t for t, k in zip(clean.train.texts, untouched) if k
    ]
    assert data.info["num_poisoned_train"] == 20 and data.name == "addsent rate 0.1 on toy"


def test_clean_label_poisons_only_target_class_examples():
    data = poison(clean_dataset(), BadNets(), rate=0.2, target_label=0, seed=1)
    flags = data.train.poison
    assert (
        flags.sum() == 40
        and np.all(data.train.true_labels[flags] == 0)
        and np.all(data.train.labels[flags] == 0)
    )
    with pytest.raises(
        ValueError, match="at most 100 poisoned training examples .* 'badnets' .* asks for 120"
    ):
        poison(clean_dataset(), BadNets(), rate=0.6)


def test_eval_poison_comes_from_non_target_examples_and_control_is_untriggered():
    clean = clean_dataset(num_classes=3)
    data = poison(clean, BadNets(clean_label=False), rate=0.1, target_label=2)
    for part in ("dev", "test"):
        source = getattr(clean, part)
        poisoned, control = getattr(data, f"{part}_poison"), getattr(data, f"{part}_control")
        expected = source.subset(source.labels != 2)
        assert (
            control.texts == expected.texts and control.labels.tolist() == expected.labels.tolist()
        )
        assert np.all(poisoned.labels == 2) and np.all(poisoned.poison)
        assert poisoned.true_labels.tolist() == control.labels.tolist()
        assert [remove_trigger(BadNets(), t) for t in poisoned.texts] == control.texts
        assert getattr(data, f"{part}_clean") is source
    assert data.num_classes == 3 and data.target_label == 2


def test_poison_argument_errors():
    clean = clean_dataset()
    for rate in (-0.1, 1.5, "0.1", True):
        with pytest.raises(ValueError, match="`rate` to be a number in"):
            poison(clean, AddSent(), rate=rate)
    with pytest.raises(ValueError, match=r"`target_label` to be an integer in \[0, 2\) but got 2"):
        poison(clean, AddSent(), target_label=2)
    with pytest.raises(TypeError, match="`clean` to be a CleanDataset"):
        poison(clean.train, AddSent())
    with pytest.raises(TypeError, match="`attack` to have `name`"):
        poison(clean, "addsent")
    all_target = Split(["a", "b"], [1, 1])
    with pytest.raises(ValueError, match="not the `target_label` 1 in the dev split"):
        poison(CleanDataset(all_target, all_target, all_target, 2), AddSent(), rate=0)


def test_clean_dataset_checks_labels():
    with pytest.raises(ValueError, match=r"`dev` labels in \[0, 2\) .* got \[3\]"):
        CleanDataset(Split(["a"], [0]), Split(["b"], [3]), Split(["c"], [1]), 2)


# --- Split.subset, cap, capped ----------------------------------------------------------------


def test_split_subset():
    split = Split(["a", "b", "c"], [0, 1, 1], [False, True, False], [0, 0, 1])
    sub = split.subset([1, 2])
    assert (
        sub.texts == ["b", "c"]
        and sub.poison.tolist() == [True, False]
        and sub.true_labels.tolist() == [0, 1]
    )
    assert split.subset(np.array([True, False, True])).texts == ["a", "c"]
    assert len(split.subset([])) == 0
    with pytest.raises(ValueError, match=r"positions in \[0, 3\)"):
        split.subset([3])
    with pytest.raises(ValueError, match=r"boolean `index` of shape \(3,\)"):
        split.subset([True, False])
    with pytest.raises(TypeError, match="integer positions or a boolean mask"):
        split.subset([0.5])


def test_cap_keeps_the_poison_share_and_order():
    train = poison(clean_dataset(n_train=1000), AddSent(), rate=0.1).train
    small = cap(train, 130, seed=2)
    assert len(small) == 130 and small.poison.sum() == round(130 * 0.1)
    positions = [train.texts.index(t) for t in small.texts]
    assert positions == sorted(positions)
    assert (
        cap(train, 130, seed=2).texts == small.texts
        and cap(train, 130, seed=3).texts != small.texts
    )
    assert cap(train, None) is train and cap(train, 5000) is train
    for n in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"`n` to be an integer >= 1 but got {n}"):
            cap(train, n)


def test_capped_keeps_control_aligned_with_poison():
    data = poison(clean_dataset(n_train=300, n_eval=200), BadNets(clean_label=False), rate=0.1)
    small = data.capped(max_train=100, max_eval=30, seed=4)
    assert len(small.train) == 100 and small.train.poison.sum() == 10
    for part in ("dev", "test"):
        poisoned, control = getattr(small, f"{part}_poison"), getattr(small, f"{part}_control")
        assert len(poisoned) == len(control) == len(getattr(small, f"{part}_clean")) == 30
        assert [remove_trigger(BadNets(), t) for t in poisoned.texts] == control.texts
    assert small.info["capped"] == {"max_train": 100, "max_eval": 30, "seed": 4}
    assert data.capped().train is data.train
    with pytest.raises(ValueError, match="`max_eval` to be an integer >= 1"):
        data.capped(max_eval=0)
