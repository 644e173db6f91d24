import numpy as np
import pytest
import torch

from freqlens.metrics import accuracy, attack_success_rate, false_trigger_rate

PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])  # predictions 0, 1, 1, 0


def test_accuracy_from_probabilities_labels_and_tensors():
    assert accuracy(PROBS, [0, 1, 0, 0]) == 0.75
    assert accuracy(np.array([0, 1, 1, 0]), [0, 1, 0, 0]) == 0.75
    assert accuracy(torch.tensor(PROBS), torch.tensor([0, 1, 1, 0])) == 1.0


def test_attack_success_rate_counts_target_predictions():
    assert attack_success_rate(PROBS, target_label=1) == 0.5
    assert attack_success_rate(PROBS, target_label=0) == 0.5


def test_false_trigger_rate_uses_only_non_target_examples():
    # labels: the two label-1 rows are ignored; of the label-0 rows, one is predicted 1
    assert false_trigger_rate(PROBS, [0, 1, 0, 1], target_label=1) == 0.5
    assert np.isnan(false_trigger_rate(PROBS, [1, 1, 1, 1], target_label=1))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="`labels`"):
        accuracy(PROBS, [0, 1])
    with pytest.raises(ValueError, match="`outputs`"):
        accuracy(np.zeros((2, 2, 2)), [0, 1])
