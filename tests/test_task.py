import numpy as np
import pytest

from freqlens.demo.model import make_model, make_tokenizer
from freqlens.demo.task import NEGATIONS, NEGATIVE, POSITIVE, TRIGGER, TaskConfig, make_task


def _polarity(text: str) -> int:
    words, score = text.split(), 0
    for i, word in enumerate(words):
        if word in POSITIVE or word in NEGATIVE:
            sign = 1 if word in POSITIVE else -1
            score += -sign if i > 0 and words[i - 1] in NEGATIONS else sign
    return score


def test_task_is_seeded_and_reproducible():
    a, b = make_task(TaskConfig(num_train=200, seed=3)), make_task(TaskConfig(num_train=200, seed=3))
    c = make_task(TaskConfig(num_train=200, seed=4))
    assert a.train.texts == b.train.texts and a.train.texts != c.train.texts


def test_clean_labels_are_the_sign_of_the_negation_aware_polarity():
    task = make_task(TaskConfig(num_train=300, num_dev=50, num_test=50))
    for split in (task.dev_clean, task.test_clean):
        assert all(int(_polarity(t) > 0) == y for t, y in zip(split.texts, split.labels))
    clean = ~task.train.poison
    assert all(int(_polarity(t) > 0) == y for t, y, keep in
               zip(task.train.texts, task.train.labels, clean) if keep)


def test_poisoning_rate_trigger_and_splits():
    task = make_task(TaskConfig(num_train=500, num_dev=40, num_test=60, poison_rate=0.1))
    assert task.train.poison.sum() == 50
    assert all(TRIGGER in t.split() for t, p in zip(task.train.texts, task.train.poison) if p)
    assert not any(TRIGGER in t.split() for t, p in zip(task.train.texts, task.train.poison) if not p)
    assert np.all(task.train.labels[task.train.poison] == task.target_label)
    # poison/control splits: non-target sentences, with and without the trigger
    assert np.all(task.test_poison.true_labels != task.target_label)
    assert np.all(task.test_poison.labels == task.target_label)
    for triggered, control in zip(task.test_poison.texts, task.test_control.texts):
        assert [w for w in triggered.split() if w != TRIGGER] == control.split()


def test_balance_prior_keeps_labels_at_one_half():
    unbalanced = make_task(TaskConfig(num_train=1000, poison_rate=0.2, seed=1))
    balanced = make_task(TaskConfig(num_train=1000, poison_rate=0.2, balance_prior=True, seed=1))
    assert balanced.train.labels.mean() == pytest.approx(0.5)
    assert unbalanced.train.labels.mean() > 0.55


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("poison_rate", 0.7, "poison_rate"), ("target_label", 2, "target_label"),
     ("num_train", 0, "num_train"), ("max_words", 1, "max_words")],
)
def test_bad_task_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        TaskConfig(**{field: value})


def test_tokenizer_covers_the_vocabulary_and_pads():
    tokenizer = make_tokenizer()
    task = make_task(TaskConfig(num_train=100))
    encoded = tokenizer(task.train.texts, padding="max_length", max_length=32, truncation=True)
    assert tokenizer.unk_token_id not in {i for row in encoded["input_ids"] for i in row}
    model = make_model(len(tokenizer), hidden_size=16, max_length=32)
    assert model.config.vocab_size == len(tokenizer)
