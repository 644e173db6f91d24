"""BKI (freqlens/defenses/bki.py): the positions scored, the deletion scores against deleting by hand,
the keyword statistic against its formula, the defense on a set with known poisoned rows in every
family, its settings, and a `freqlens run`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from freqlens.config import ExperimentConfig
from freqlens.defenses import DefenseConfig, make_defense
from freqlens.defenses.bki import (
    BKISettings,
    deletion_scores,
    rank_keywords,
    right_padded,
    scored_positions,
)
from freqlens.training import TrainConfig

from .helpers import FAMILIES, build
from .trigger_set import FRAME, PAD_ID, TRIGGER, representation, trigger_set

TRAIN = TrainConfig(epochs=1, batch_size=16, lr=3e-3)


def test_scored_positions_skip_the_frame_special_ids_and_padding_and_cap():
    ids = torch.tensor([[2, 11, 12, 13, 3, 0], [2, 14, 3, 0, 0, 0], [2, 99, 15, 16, 17, 3]])
    mask = (torch.arange(6)[None, :] < torch.tensor([[5], [3], [6]])).long()
    model = build("llama")  # config: pad 0, bos = eos = 99
    got = scored_positions(model, {"input_ids": ids, "attention_mask": mask}, max_tokens=2)
    assert got.tolist() == [[False, True, True, False, False, False],  # [CLS]-like 2 and [SEP]-like 3 skipped
                            [False, True, False, False, False, False],
                            [False, False, True, True, False, False]]  # 99 is the model's eos; capped at 2
    unframed = ids.clone()
    unframed[1, 0] = 20  # the first position no longer holds one id in every row: it is scored
    got = scored_positions(model, {"input_ids": unframed, "attention_mask": mask}, max_tokens=9)
    assert got[1, 0] and got[0, 1] and not got[0, 4]


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_deletion_scores_match_deleting_each_token_by_hand(family):
    """The score of position j is ||r(x) - r(x without token j)||_inf, with the sentence rebuilt by hand
    (token removed, padding appended) and r computed through the family's own modules."""
    enc, _, _ = trigger_set(family, n=5)
    model = build(family, seed=2)
    positions = scored_positions(model, enc, max_tokens=64)
    scores, rows = deletion_scores(model, enc, positions, batch_size=3)
    assert rows == 5 + int(positions.sum())
    pad = PAD_ID[family]
    for i in range(5):
        ids = enc["input_ids"][i].tolist()
        mask = enc["attention_mask"][i].tolist()
        original = representation(family, model, {k: v[i:i + 1] for k, v in enc.items()})[0]
        expected = []
        for j in torch.nonzero(positions[i]).flatten().tolist():
            cut = {"input_ids": torch.tensor([ids[:j] + ids[j + 1:] + [pad]]),
                   "attention_mask": torch.tensor([mask[:j] + mask[j + 1:] + [0]])}
            expected.append(float((representation(family, model, cut)[0] - original).abs().max()))
        np.testing.assert_allclose(scores[i], expected, rtol=1e-4, atol=1e-6)


def test_rank_keywords_is_log10_count_times_mean_importance():
    tokens = [np.array([5, 6, 7]), np.array([5, 8]), np.array([6, 5, 9]), np.array([9])]
    scores = [np.array([1.0, 0.5, 0.1]), np.array([3.0, 0.2]), np.array([0.4, 2.0, 0.3]), np.array([0.6])]
    ranked, kept = rank_keywords(tokens, scores, top_words=2)
    assert kept == [{5, 6}, {5, 8}, {5, 6}, {9}]
    # token 5: kept 3 times, mean (1 + 3 + 2) / 3; token 6: twice, mean (0.5 + 0.4) / 2; 8 and 9 once: 0
    assert ranked[0] == (5, pytest.approx(math.log10(3) * 2.0), 3, pytest.approx(2.0))
    assert ranked[1] == (6, pytest.approx(math.log10(2) * 0.45), 2, pytest.approx(0.45))
    assert [token for token, *_ in ranked[2:]] == [8, 9]  # g = 0 for both: the lower id first


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_bki_flags_the_triggered_rows(family):
    """200 rows, 20 of them class-0 rows with token 7 inserted and labelled 1: token 7 is the top keyword
    and exactly the triggered rows are flagged, in every family."""
    enc, y, poison = trigger_set(family)
    defense = make_defense(DefenseConfig(name="bki", options={"epochs": 5}))
    torch.manual_seed(0)
    result, info = defense.fit(build(family, seed=0), enc, y, TRAIN, poison=poison, progress=False)
    detection = info["detection"]
    assert detection["poisoned"] == 20
    assert detection["recall"] >= 0.95 and detection["precision"] >= 0.95, detection
    bki = info["bki"]
    assert bki["keywords"][0]["token_id"] == TRIGGER and bki["keywords"][0]["count"] >= 19
    assert bki["ranking"][0] == bki["keywords"][0] and len(bki["ranking"]) == 10
    assert FRAME[0] not in [entry["token_id"] for entry in bki["ranking"]]
    # one forward row per sentence and per scored token (the frame is not scored)
    assert bki["forward_rows"] == 200 + int(enc["attention_mask"].sum()) - 2 * 200
    assert bki["first_phase_steps"] == 5 * 13 and bki["sentences_scored"] == 200
    assert info["removed"] == detection["flagged"] and result.steps == math.ceil(info["trained_on"] / 16)


def _left_padded(encodings):
    """The same rows padded on the left, as a tokenizer with ``padding_side="left"`` gives them."""
    mask = encodings["attention_mask"]
    order = torch.argsort((mask != 0).to(torch.int8), dim=1, stable=True)  # padding first, then the tokens
    return {key: torch.gather(value, 1, order) for key, value in encodings.items()}


def test_right_padded_moves_each_rows_tokens_to_the_front_in_order():
    enc, _, _ = trigger_set("bert", n=20)
    left = _left_padded(enc)
    assert not torch.equal(left["input_ids"], enc["input_ids"])
    back = right_padded(left)
    for key in enc:
        torch.testing.assert_close(back[key], enc[key])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_left_padded_inputs_are_scored_as_right_padded_ones(family):
    """Deleting a position appends a padding column at the end: with left padding that shifted the
    last token into a place it never held, and every deletion looked important (F1 0.0-0.06)."""
    enc, y, poison = trigger_set(family)
    defense = make_defense(DefenseConfig(name="bki", options={"epochs": 5}))
    torch.manual_seed(0)
    _, info = defense.fit(build(family, seed=0), _left_padded(enc), y, TRAIN, poison=poison, progress=False)
    assert info["detection"]["recall"] >= 0.95 and info["detection"]["precision"] >= 0.95, info["detection"]
    assert info["bki"]["keywords"][0]["token_id"] == TRIGGER


def test_an_untrained_model_does_not_find_the_keyword():
    """At a learning rate that moves nothing the trigger is an ordinary token: it is not the top
    keyword, so the test above measures what the first phase taught."""
    enc, y, poison = trigger_set("bert")
    defense = make_defense(DefenseConfig(name="bki", options={"epochs": 1}))
    torch.manual_seed(0)
    _, info = defense.fit(build("bert", seed=0), enc, y, TrainConfig(epochs=1, batch_size=16, lr=1e-9),
                          poison=poison, progress=False)
    assert info["bki"]["keywords"][0]["token_id"] != TRIGGER and info["detection"]["recall"] < 0.5


@pytest.mark.parametrize(("key", "value"), [("epochs", 0), ("top_words", 0), ("keywords", -1),
                                            ("max_tokens", 2.5)])
def test_a_bad_option_is_named_when_the_config_is_built(tmp_path, key, value):
    path = tmp_path / "experiment.toml"
    path.write_text('[defense]\nname = "bki"\n')
    assert ExperimentConfig.from_toml(path).defense.options == BKISettings()
    with pytest.raises(ValueError, match=rf"`defense\.options\.{key}` to be an integer >= 1 but got {value}"):
        ExperimentConfig.from_toml(path, overrides=[f"defense.options.{key}={value}"])
    with pytest.raises(ValueError, match=r"`defense\.options\.restart` to be true or false but got 'no'"):
        ExperimentConfig.from_toml(path, overrides=['defense.options.restart="no"'])
