"""split_reference: a clean reference set taken out of dev-clean."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from freqlens.data.splits import split_reference
from freqlens.demo.task import TaskConfig, make_task


@pytest.fixture(scope="module")
def dataset():
    return make_task(TaskConfig(num_train=40, num_dev=30, num_test=10, seed=0))


def pairs(split):
    return Counter(zip(split.texts, split.labels.tolist()))


def test_sizes(dataset):
    rest, ref = split_reference(dataset, 12)
    assert len(ref) == 12
    assert len(rest.dev_clean) == 30 - 12
    assert len(dataset.dev_clean) == 30  # the input is not changed


def test_reference_and_remaining_dev_clean_partition_dev_clean(dataset):
    rest, ref = split_reference(dataset, 12, seed=3)
    assert pairs(ref) + pairs(rest.dev_clean) == pairs(dataset.dev_clean)
    original = list(dataset.dev_clean.texts)
    positions = [original.index(t) for t in ref.texts]  # texts of the generated task are distinct here
    assert len(set(original)) == len(original)
    assert not set(ref.texts) & set(rest.dev_clean.texts)
    assert positions == sorted(positions)  # kept in the original order
    assert not ref.poison.any()


def test_other_splits_are_kept(dataset):
    rest, _ = split_reference(dataset, 5)
    for part in ("train", "dev_poison", "test_clean", "test_poison", "dev_control", "test_control"):
        assert getattr(rest, part) is getattr(dataset, part)
    assert rest.info["reference"] == {"size": 5, "seed": 0, "from": "dev_clean"}


def test_the_seed_decides_the_draw(dataset):
    _, a = split_reference(dataset, 10, seed=1)
    _, b = split_reference(dataset, 10, seed=1)
    _, c = split_reference(dataset, 10, seed=2)
    assert a.texts == b.texts
    assert a.texts != c.texts
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("size", [30, 31, 100])
def test_a_reference_set_as_large_as_dev_clean_is_refused(dataset, size):
    with pytest.raises(ValueError, match="reference_size"):
        split_reference(dataset, size)


def test_the_largest_possible_reference_set_leaves_one(dataset):
    rest, ref = split_reference(dataset, 29)
    assert (len(ref), len(rest.dev_clean)) == (29, 1)


@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_a_bad_size_is_refused(dataset, size):
    with pytest.raises(ValueError, match="reference_size"):
        split_reference(dataset, size)
