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


def test_evaluate_backdoor_uses_the_control_split_or_the_non_target_clean_examples():
    from freqlens.data import PoisonedDataset, Split
    from freqlens.metrics import evaluate_backdoor

    clean = Split(["a", "b", "c", "d"], [0, 1, 0, 1])
    poisoned = Split(["a+", "c+"], [1, 1], poison=[True, True], true_labels=[0, 0])
    control = Split(["a", "c"], [0, 0])
    predicted = {"a": 1, "b": 1, "c": 0, "d": 1, "a+": 1, "c+": 0}  # "a" triggers falsely

    def probabilities(split):
        return np.array([predicted[t] for t in split.texts])

    data = PoisonedDataset(clean, clean, poisoned, clean, poisoned, test_control=control)
    metrics = evaluate_backdoor(probabilities, data)
    assert metrics == {"cacc": 0.75, "majority_prediction_share": 0.75, "asr": 0.5, "false_trigger_rate": 0.5,
                       "net_backdoor_effect": 0.0}
    without = evaluate_backdoor(probabilities, PoisonedDataset(clean, clean, poisoned, clean, poisoned))
    assert without["false_trigger_rate"] == 0.5  # non-target clean test examples "a", "c"


def test_a_model_collapsed_to_one_class_is_named():
    from freqlens.data import PoisonedDataset, Split
    from freqlens.metrics import collapse_warning, evaluate_backdoor

    clean = Split([f"s{i}" for i in range(40)], [i % 2 for i in range(40)])
    poisoned = Split(["p0+", "p1+"], [1, 1], poison=[True, True], true_labels=[0, 0])
    data = PoisonedDataset(clean, clean, poisoned, clean, poisoned)
    always_target = evaluate_backdoor(lambda split: np.ones(len(split), dtype=int), data)
    assert always_target["majority_prediction_share"] == 1.0 and always_target["asr"] == 1.0
    assert "collapsed" in collapse_warning(always_target) and "train.lr" in collapse_warning(always_target)
    one_off = evaluate_backdoor(lambda split: np.array([0] + [1] * (len(split) - 1)), data)
    assert one_off["majority_prediction_share"] == 39 / 40 and collapse_warning(one_off)
    honest = evaluate_backdoor(lambda split: np.array(split.labels), data)
    assert honest["majority_prediction_share"] == 0.5 and collapse_warning(honest) is None
