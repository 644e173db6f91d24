"""ASR and false-trigger rate over non-target sources only (issue 12, item 2).

A dev/test-poison file made by another tool (or by hand) may trigger
target-class sentences too. freqlens finds each triggered sentence's source
in the clean file of the same split (by removing a BadNets/AddSent trigger,
or, for paraphrases, by comparing each with EVERY clean row of the split and
confirming OpenBackdoor's row-by-row pairing where it is the best match),
drops those whose source is of the target class or unclear, and reports how
many in ``info["poison_sources"]`` (``results.json``: ``dataset.poison_sources``).
A backdoor-free oracle (it predicts each sentence's true source label) must
score ASR 0 and false-trigger rate 0, whatever the mix of sources.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from freqlens.data import AddSent, BadNets, load_openbackdoor
from freqlens.metrics import attack_success_rate, evaluate_backdoor

SST2 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sst-2"
WORDS = ("film story actor plot scene music camera script director ending dialogue screen "
         "drama comedy horror thriller romance hero villain mother father city river night "
         "summer winter garden letter window train doctor island forest castle ocean mirror").split()
TARGET = 1


def sentences(rng, n):
    return [" ".join(rng.choice(WORDS, size=rng.integers(6, 10), replace=False)) for _ in range(n)]


def paraphrase(text: str) -> str:
    """A style paraphrase: new words around the source's, order changed (no trigger to remove)."""
    words = text.split()
    return "verily , " + " ".join(reversed(words[1:])) + " and thus it was"


def write(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["", "0", "1", "2"])
        writer.writerows((i, t, y, p) for i, (t, y, p) in enumerate(rows))


def mixed_folder(root: Path, kind: str, seed: int = 0, shuffle: bool = True) -> tuple[Path, dict]:
    """An OpenBackdoor folder whose dev/test-poison files trigger every clean sentence, half of
    them target-class. Returns the folder and each text's true source label (the oracle)."""
    rng = np.random.default_rng(seed)
    folder = root / kind
    oracle = {}
    attack = {"badnets": BadNets(), "addsent": AddSent()}.get(kind)
    for part in ("train", "dev", "test"):
        texts = sentences(rng, 12)
        labels = rng.permutation([TARGET] * 6 + [0] * 6).tolist()
        clean = [(t, y, 0) for t, y in zip(texts, labels)]
        oracle.update({t: y for t, y in zip(texts, labels)})
        made = [attack.apply(t, rng) if attack else paraphrase(t) for t in texts]
        oracle.update({m: y for m, y in zip(made, labels)})
        if part == "train":
            write(folder / "train-clean.csv", clean)
            write(folder / "mix" / "0.1" / "train-poison.csv",
                  clean[2:] + [(m, TARGET, 1) for m in made[:2]])
            continue
        order = rng.permutation(12) if shuffle and attack else np.arange(12)
        write(folder / f"{part}-clean.csv", clean)
        write(folder / f"{part}-poison.csv", [(made[i], TARGET, 1) for i in order])
    return folder, oracle


def oracle_model(oracle):
    """A backdoor-free model: it predicts each sentence's true source label, trigger or not."""
    def probabilities(split):
        out = np.zeros((len(split), 2))
        out[np.arange(len(split)), [oracle[t] for t in split.texts]] = 1.0
        return out
    return probabilities


@pytest.mark.parametrize("kind", ["badnets", "addsent", "stylebkd"])
def test_an_oracle_scores_asr_0_on_mixed_source_poison_files(tmp_path, kind):
    folder, oracle = mixed_folder(tmp_path, kind)
    data = load_openbackdoor(folder, target_label=TARGET)
    probabilities = oracle_model(oracle)
    for part in ("dev", "test"):
        poisoned = getattr(data, f"{part}_poison")
        assert len(poisoned) == 6 and np.all(poisoned.true_labels != TARGET)
        assert attack_success_rate(probabilities(poisoned), TARGET) == 0.0
        note = data.info["poison_sources"][f"{part}_poison"]
        assert (note["rows"], note["kept"], note["dropped_target_source"]) == (12, 6, 6)
        assert note["sources"].startswith("matched" if kind != "stylebkd" else "paired")
        control = getattr(data, f"{part}_control")  # the kept sources, clean, with true labels
        assert len(control) == 6 and np.all(control.labels != TARGET)
    metrics = evaluate_backdoor(probabilities, data)
    assert {k: metrics[k] for k in ("cacc", "asr", "false_trigger_rate", "net_backdoor_effect")} == {
        "cacc": 1.0, "asr": 0.0, "false_trigger_rate": 0.0, "net_backdoor_effect": 0.0}


@pytest.mark.parametrize("kind", ["badnets", "addsent"])
def test_sources_missing_from_the_clean_file_are_refused(tmp_path, kind):
    folder, _ = mixed_folder(tmp_path, kind)
    rows = list(csv.reader((folder / "test-clean.csv").open()))[1:]
    unrelated = [t.replace(" ", "_").upper() for t in sentences(np.random.default_rng(99), 12)]
    write(folder / "test-clean.csv", [(u, y, p) for u, (_, _, y, p) in zip(unrelated, rows)])  # not the sources
    with pytest.raises(ValueError, match=r"source .* of each of the 12 triggered sentences in "
                                         r".*test-poison\.csv.* 12 of them are not.* 12 of them "
                                         r"\(100%; at most 20% allowed\) match no row"):
        load_openbackdoor(folder)


def test_paraphrases_of_sentences_not_in_the_clean_file_are_refused(tmp_path):
    folder, _ = mixed_folder(tmp_path, "stylebkd")
    rows = list(csv.reader((folder / "dev-poison.csv").open()))[1:]
    unrelated = sentences(np.random.default_rng(99), 12)  # made from sentences dev-clean lacks
    write(folder / "dev-poison.csv", [(paraphrase(t.upper().replace(" ", "_")), y, p)
                                      for t, (_, _, y, p) in zip(unrelated, rows)])
    with pytest.raises(ValueError, match=r"dev-poison\.csv.* 12 of them \(100%; at most 20% allowed\) "
                                         r"match no row of dev-clean\.csv clearly"):
        load_openbackdoor(folder)


def test_paraphrases_in_another_order_find_their_sources_by_similarity(tmp_path):
    """The row-by-row layout lost (rows reversed): each row's clear best match is its source."""
    folder, oracle = mixed_folder(tmp_path, "stylebkd")
    rows = list(csv.reader((folder / "dev-poison.csv").open()))[1:]
    write(folder / "dev-poison.csv", [(t, y, p) for _, t, y, p in rows[::-1]])
    data = load_openbackdoor(folder)
    assert data.dev_poison.true_labels.tolist() == [oracle[t] for t in data.dev_poison.texts] == [0] * 6
    assert [paraphrase(t) for t in data.dev_control.texts] == data.dev_poison.texts


def breaker_folder(root: Path, fraction: float, seed: int) -> tuple[Path, dict]:
    """An OpenBackdoor StyleBkd folder as another tool may write it: test-poison.csv has one row
    per non-target clean sentence (OpenBackdoor's count and order), but its last ``fraction``
    of rows are paraphrases of TARGET-class sentences (the reviewer's construction: a reworded
    copy), so the row-by-row pairing puts them next to non-target sources."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i}" for i in range(400)]
    oracle = {}

    def clean_rows(n):
        texts = [" ".join(rng.choice(vocabulary, size=int(rng.integers(7, 13)), replace=False))
                 for _ in range(n)]
        labels = rng.permutation([TARGET] * (n // 2) + [0] * (n - n // 2)).tolist()
        oracle.update(zip(texts, labels))
        return texts, labels

    folder = root / "stylebkd"
    for part in ("train", "dev", "test"):
        texts, labels = clean_rows(60)
        clean = [(t, y, 0) for t, y in zip(texts, labels)]
        if part == "train":
            write(folder / "train-clean.csv", clean)
            write(folder / "mix" / "0.1" / "train-poison.csv", clean)
            continue
        sources = [t for t, y in zip(texts, labels) if y != TARGET]
        targets = [t for t, y in zip(texts, labels) if y == TARGET]
        k = int(fraction * len(sources))
        made = [paraphrase(t) for t in sources[:len(sources) - k]]
        made += ["in a way , " + t for t in targets[:k]]
        for m, t in zip(made, sources[:len(sources) - k] + targets[:k]):
            oracle[m] = oracle[t]
        write(folder / f"{part}-clean.csv", clean)
        write(folder / f"{part}-poison.csv", [(m, TARGET, 1) for m in made])
    return folder, oracle


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("fraction", [0.0, 0.15, 0.3, 0.35, 0.5, 0.8])
def test_target_class_paraphrases_are_never_counted_in_asr(tmp_path, fraction, seed):
    """Before, a row was accepted when it shared more words with its pair than with the NEXT
    row's: about 45% of wrong rows passed, and up to ~35% target-class rows got through. Each
    row is now judged against every clean row of its split."""
    folder, oracle = breaker_folder(tmp_path, fraction, seed)
    data = load_openbackdoor(folder, target_label=TARGET)
    probabilities = oracle_model(oracle)
    for part in ("dev", "test"):
        poisoned = getattr(data, f"{part}_poison")
        assert len(poisoned) > 0 and attack_success_rate(probabilities(poisoned), TARGET) == 0.0
        assert all(oracle[t] != TARGET for t in poisoned.texts)
        note = data.info["poison_sources"][f"{part}_poison"]
        wrong = int(fraction * note["rows"])
        assert note["kept"] + note["dropped_target_source"] + note["unmatched"] == note["rows"]
        assert note["dropped_target_source"] + note["unmatched"] >= wrong
        assert note["kept"] == note["rows"] - wrong  # every genuine pair kept here
        control = getattr(data, f"{part}_control")
        assert [oracle[t] for t in control.texts] == poisoned.true_labels.tolist()


def test_a_poison_file_with_only_target_sources_is_refused(tmp_path):
    folder, _ = mixed_folder(tmp_path, "addsent")
    rows = list(csv.reader((folder / "test-clean.csv").open()))[1:]
    write(folder / "test-clean.csv", [(t, TARGET, p) for _, t, y, p in rows])
    with pytest.raises(ValueError, match=r"non-target source in .*test-poison\.csv .* all 12"):
        load_openbackdoor(folder)


@pytest.mark.skipif(not SST2.is_dir(), reason=f"the SST-2 data is not at {SST2}")
@pytest.mark.parametrize("attack", ["badnets", "addsent", "stylebkd", "synbkd"])
def test_the_shared_openbackdoor_files_have_only_non_target_sources(attack):
    train = "clean/0.1/train-poison.csv" if attack == "badnets" else "mix/0.1/train-poison.csv"
    data = load_openbackdoor(SST2 / attack, train=train)
    for part, rows in (("dev", 428), ("test", 912)):
        note = data.info["poison_sources"][f"{part}_poison"]
        if attack in ("badnets", "addsent"):  # found exactly once the trigger is removed
            assert (note["rows"], note["kept"], note["dropped_target_source"], note["unmatched"]) == (
                rows, rows, 0, 0)
            assert note["sources"].startswith("matched")
        else:  # paraphrases: OpenBackdoor's pairs, confirmed by similarity; measured 2-6% unclear
            assert note["rows"] == rows and note["kept"] >= 0.9 * rows
            assert note["unmatched"] <= 0.07 * rows and note["dropped_target_source"] <= 0.02 * rows
            assert note["sources"].startswith("paired row by row with the non-target")
        assert len(getattr(data, f"{part}_control")) == note["kept"]


@pytest.mark.slow
def test_freqlens_run_reports_the_dropped_sources_in_results_json(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from freqlens.config import ExperimentConfig
    from freqlens.demo.model import make_tokenizer
    from freqlens.experiment import run_experiment

    folder, _ = mixed_folder(tmp_path / "data", "addsent")
    tokenizer = make_tokenizer()
    model = tmp_path / "model"
    BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=2)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    config = ExperimentConfig.from_dict({
        "model": {"name": str(model), "max_length": 24, "device": "cpu"},
        "data": {"path": str(folder)},
        "train": {"epochs": 1, "batch_size": 6},
        "record": {"schedule": "every:1", "probe_size": 6},
        "analysis": {"num_widths": 2},
    })
    run_experiment(config, tmp_path / "run", progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    sources = results["dataset"]["poison_sources"]
    assert sources["test_poison"]["dropped_target_source"] == 6
    assert sources["dev_poison"]["kept"] == 6
