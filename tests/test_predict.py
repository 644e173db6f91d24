"""predict_proba batches rows by length and cuts shared trailing padding: same outputs."""

import numpy as np
import pytest
import torch

from freqlens.models import _logits, predict_proba
from tests.models import padded_encodings, tiny_bert, tiny_gpt2, tiny_llama, tiny_roberta

FAMILIES = {
    "bert": (tiny_bert, 0, True),
    "roberta": (tiny_roberta, 1, False),
    "gpt2": (tiny_gpt2, 0, False),
    "llama": (tiny_llama, 0, False),
}


def _reference(model, encodings):
    """One row at a time, full padded length: no sorting, no trimming."""
    model.eval()
    with torch.no_grad():
        rows = [
            torch.softmax(_logits(model(**{k: v[i : i + 1] for k, v in encodings.items()})), -1)
            for i in range(len(encodings["input_ids"]))
        ]
    return torch.cat(rows).numpy()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("side", ["right", "left"])
def test_sorted_trimmed_batches_give_the_same_probabilities(family, side):
    build, pad_id, types = FAMILIES[family]
    model = build(seed=0)
    encodings = padded_encodings(12, 10, seed=3, pad_from=2, pad_id=pad_id, side=side,
                                 token_type_ids=types)
    expected = _reference(model, encodings)
    model.train()
    for batch_size in (1, 5, 64):
        got = predict_proba(model, encodings, batch_size=batch_size)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert model.training  # restored


def test_length_batches_bound_rows_and_padding_and_keep_every_row_once():
    from freqlens.models import length_batches

    lengths = torch.tensor([3, 4, 4, 5, 9, 10, 10, 11, 30, 31, 32, 64])
    order = torch.arange(12) * 10  # any row ids, already sorted by length
    batches = length_batches(order, lengths, batch_size=3, max_padding=0.3)
    assert torch.equal(torch.cat(batches), order)
    for batch in batches:
        assert 1 <= len(batch) <= 3
        rows = lengths[batch // 10]
        if len(batch) > 1:
            assert rows.max() * len(rows) <= 1.3 * rows.sum()
    assert [len(b) for b in length_batches(order, None, batch_size=5)] == [5, 5, 2]
