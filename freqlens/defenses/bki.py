"""BKI: Backdoor Keyword Identification, on token positions, for any freqlens model family.

Chen and Dai, "Mitigating backdoor attacks in LSTM-based text classification
systems by Backdoor Keyword Identification" (arXiv 2007.12070), as
OpenBackdoor (``openbackdoor/defenders/bki_defender.py``)
ports it to transformers:

1. train the model on the poisoned training set for a short while
   (``defense.options.epochs``);
2. score every token of every training sentence by how much deleting it
   moves the sentence's representation: ``s_i = || r(x) - r(x without
   token i) ||_inf``, with r the input of the classification head's output
   layer (:func:`freqlens.defenses.cube.head_inputs`). The paper scores a
   word of an LSTM by the change it makes to the hidden states, at its own
   step and in the final state when the word is removed; only the
   final-state term carries over to a transformer, and it is the one
   OpenBackdoor keeps. OpenBackdoor's r is the last layer's state at
   position 0 ([CLS]); freqlens' is what the head reads (for BERT the pooler
   applied to that state), because position 0 of a causal decoder (GPT-2,
   Llama) sees no other token, while its last real token sees them all;
3. keep each sentence's ``top_words`` (p = 5) highest-scoring tokens;
4. over the training set, give each kept token k its count f_k (sentences
   where it is among the top p) and its mean score v_k, and rank the tokens
   by ``g_k = log10(f_k) * v_k`` (a token kept once scores 0);
5. flag the sentences whose top p tokens hold the highest-ranked keyword
   (``keywords`` > 1: any of that many).

freqlens deletes token positions, not whitespace words: the model gets the
token ids with position i removed and one padding column appended, so it
needs no tokenizer and works for every family (a trigger word split into
word pieces is scored piece by piece; a keyword is a token id). Positions
that hold the same id in every training sentence at its start or its end
([CLS]/[SEP], <s>/</s>, a BOS token) and the model's special ids
(``config.pad/bos/eos/sep/cls_token_id``) are never deleted: they are in
every sentence, so they would top the ranking.

Cost: one forward row per scored token plus one per sentence, i.e.
N + sum_i min(len_i, ``max_tokens``) rows (SST-2's poisoned training set with
all-MiniLM-L6-v2's tokenizer: 29 tokens per sentence on average, 27 scored,
so about 28 rows per sentence), plus ``epochs`` epochs of training; no clean
data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from freqlens._checks import check_positive_int
from freqlens.defenses.base import register_defense
from freqlens.defenses.cube import head_inputs, short_training
from freqlens.defenses.filtering import FilteringDefense, Flags

SPECIAL_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")
BLOCK_ROWS = 1024  # deleted copies built and passed through the model at a time (bounded memory)


def right_padded(encodings: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same inputs with each row's real tokens first and its padding after (right padding).

    A tokenizer may pad on the left (``padding_side="left"``); BKI deletes a
    position by shifting the rest left and appending a padding column, which
    only keeps the sentence intact under right padding. Rows already
    right-padded (and inputs without ``attention_mask``) are returned as they
    are. Every key is reordered alike, shape (N, L) unchanged.
    """
    mask = encodings.get("attention_mask")
    if mask is None:
        return dict(encodings)
    order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)  # real positions first, in order
    return {key: torch.gather(value, 1, order) if value.ndim == 2 and value.shape == mask.shape else value
            for key, value in encodings.items()}


def padded_on_the_left(encodings: Mapping[str, torch.Tensor]) -> bool:
    """Whether some row is padded on the left (padding in the first column, a real token in the last)."""
    mask = encodings.get("attention_mask")
    return mask is not None and bool(((mask[:, 0] == 0) & (mask[:, -1] != 0)).any())


def _left(encodings: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Right-padded rows moved to the right edge (left padding), every key alike."""
    mask = encodings["attention_mask"]
    order = torch.argsort((mask != 0).to(torch.int8), dim=1, stable=True)  # padding first, tokens in order
    return {key: torch.gather(value, 1, order) if value.ndim == 2 and value.shape == mask.shape else value
            for key, value in encodings.items()}


def scored_positions(model: nn.Module, encodings: Mapping[str, torch.Tensor], max_tokens: int) -> torch.Tensor:
    """(N, L) booleans: the positions BKI deletes one at a time.

    The real tokens (``attention_mask`` 1), except a sentence's first and
    last real position when every sentence has the same id there (the
    tokenizer's frame: [CLS]/[SEP], <s>/</s>, BOS) and the ids the model's
    config names special (``pad/bos/eos/sep/cls_token_id``); of the rest, the
    first ``max_tokens`` of each sentence.
    """
    ids = encodings["input_ids"]
    mask = encodings.get("attention_mask")
    real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    n, length = ids.shape
    keep = real.clone()
    if n:
        rows = torch.arange(n)
        lengths = real.sum(dim=1)
        has = lengths > 0
        first = real.float().argmax(dim=1)
        last = (torch.arange(length) * real).argmax(dim=1)
        for position in (first, last):
            frame = ids[rows, position][has]
            if frame.numel() and bool((frame == frame[0]).all()):
                keep[rows[has], position[has]] = False
    config = getattr(model, "config", None)
    for name in SPECIAL_ID_FIELDS:
        special = getattr(config, name, None)
        if isinstance(special, int):
            keep &= ids != special
    return keep & (keep.long().cumsum(dim=1) <= max_tokens)


def _pad_values(model: nn.Module, encodings: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The value of a padding column per input key (the model's pad id for ``input_ids``, 0 otherwise)."""
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if not isinstance(pad, int):
        mask = encodings.get("attention_mask")
        padded = encodings["input_ids"][mask == 0] if mask is not None else torch.empty(0)
        pad = int(padded[0]) if padded.numel() else 0
    return {key: (pad if key == "input_ids" else 0) for key in encodings}


def deletion_scores(model: nn.Module, encodings: Mapping[str, torch.Tensor], positions: torch.Tensor, *,
                    batch_size: int = 128, left: bool = False) -> tuple[list[np.ndarray], int]:
    """Each scored token's ``|| r(x) - r(x without it) ||_inf`` (BKI's importance, step 2 above).

    Args:
        model: the classifier, already trained on the poisoned set.
        encodings: tokenised sentences, each key (N, L), right-padded.
        positions: (N, L) booleans, the positions to delete one at a time
            (:func:`scored_positions`).
        batch_size: rows per forward pass.
        left: show the model every sentence (whole and with a token
            deleted) padded on the left, as a left-padding tokenizer gave
            them in training (:func:`right_padded` undoes it before).

    Returns:
        Per sentence, the scores (float64) of its positions in order, and the
        forward rows run (N + the positions scored).
    """
    n, length = positions.shape
    keys = [k for k, v in encodings.items() if v.ndim == 2 and v.shape == (n, length)]
    pads = _pad_values(model, encodings)
    shown = _left if left else dict  # the padding side the model was trained with
    original = head_inputs(model, shown(encodings), batch_size=batch_size)
    scores: list[np.ndarray] = [np.zeros(0)] * n
    base = torch.arange(length - 1)
    pending: list[tuple[int, torch.Tensor]] = []

    def run(block: list[tuple[int, torch.Tensor]]) -> None:
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        for row, where in block:
            index = base[None, :] + (base[None, :] >= where[:, None])  # (k, L - 1): every column but one
            for key in keys:
                kept = encodings[key][row][index]
                parts[key].append(torch.cat([kept, torch.full((len(where), 1), pads[key], dtype=kept.dtype)], 1))
        deleted = head_inputs(model, shown({k: torch.cat(v) for k, v in parts.items()}), batch_size=batch_size)
        start = 0
        for row, where in block:
            change = deleted[start:start + len(where)] - original[row][None, :]
            scores[row] = np.abs(change).max(axis=1).astype(np.float64)
            start += len(where)

    rows_in_block = 0
    for row in range(n):
        where = torch.nonzero(positions[row]).flatten()
        if not len(where):
            continue
        pending.append((row, where))
        rows_in_block += len(where)
        if rows_in_block >= BLOCK_ROWS:
            run(pending)
            pending, rows_in_block = [], 0
    if pending:
        run(pending)
    return scores, n + int(positions.sum())


def rank_keywords(tokens: list[np.ndarray], scores: list[np.ndarray], top_words: int
                  ) -> tuple[list[tuple[int, float, int, float]], list[set[int]]]:
    """BKI's keyword statistic (steps 3 and 4 above).

    Args:
        tokens: per sentence, the token ids of its scored positions.
        scores: per sentence, their scores (same lengths).
        top_words: p, the tokens kept per sentence (all when it has fewer).

    Returns:
        The tokens ranked by ``g = log10(f) * mean score``, best first, as
        ``(token id, g, f, mean score)`` (ties: the lower id first), and per
        sentence the set of its kept token ids.
    """
    count: dict[int, int] = {}
    total: dict[int, float] = {}
    kept: list[set[int]] = []
    for ids, values in zip(tokens, scores):
        top = np.argsort(-np.asarray(values), kind="stable")[:top_words]
        chosen = [int(ids[i]) for i in top]
        for token, i in zip(chosen, top):
            count[token] = count.get(token, 0) + 1
            total[token] = total.get(token, 0.0) + float(values[i])
        kept.append(set(chosen))
    ranked = [(token, math.log10(f) * total[token] / f, f, total[token] / f) for token, f in count.items()]
    ranked.sort(key=lambda item: (-item[1], item[0]))
    return ranked, kept


@dataclass(frozen=True)
class BKISettings:
    """BKI's settings, the config's ``[defense.options]`` table (errors name ``defense.options.<key>``)."""

    KEY: ClassVar[str] = "defense.options."

    epochs: int = 1  # epochs of training on the poisoned set before the tokens are scored
    top_words: int = 5  # p: each sentence's highest-scoring tokens that enter the keyword statistic (paper: 5)
    keywords: int = 1  # the top-ranked keywords whose sentences are flagged (paper: 1)
    max_tokens: int = 64  # tokens scored per sentence (its first ones): one forward row each
    restart: bool = True  # train the final model from the weights the run started with

    def __post_init__(self) -> None:
        key = self.KEY
        for name in ("epochs", "top_words", "keywords", "max_tokens"):
            check_positive_int(getattr(self, name), f"{key}{name}")
        if not isinstance(self.restart, bool):
            raise ValueError(f"Expected `{key}restart` to be true or false but got {self.restart!r}.")


class BKI(FilteringDefense):
    """BKI (``defense.name = "bki"``, arXiv 2007.12070): drop the sentences holding the top backdoor keyword.

    ``results.json``'s ``defense`` gets ``bki``: the first phase's steps, the
    keyword(s) flagged by (token id, score g, count f, mean importance), the
    ten best-ranked tokens, the sentences and forward rows scored; and the
    detection precision/recall of every filter.
    """

    options = BKISettings

    def flag(self, model, encodings, labels, config, *, reference, progress):
        settings = self.settings or BKISettings()
        steps = short_training(model, encodings, labels, config, settings.epochs, progress=progress)
        left = padded_on_the_left(encodings)
        encodings = right_padded(encodings)  # deletions are made right-padded, then shown as the model was trained
        positions = scored_positions(model, encodings, settings.max_tokens)
        scores, forward_rows = deletion_scores(model, encodings, positions, left=left)
        ids = encodings["input_ids"]
        tokens = [ids[row][positions[row]].numpy() for row in range(len(ids))]
        ranked, kept = rank_keywords(tokens, scores, settings.top_words)
        chosen = {token for token, *_ in ranked[:settings.keywords]}
        flagged = np.array([bool(words & chosen) for words in kept], dtype=bool)

        def entry(item):
            token, g, f, v = item
            return {"token_id": int(token), "score": round(float(g), 6), "count": int(f),
                    "mean_importance": round(float(v), 6)}

        info = {"first_phase_steps": steps, "keywords": [entry(item) for item in ranked[:settings.keywords]],
                "ranking": [entry(item) for item in ranked[:10]], "sentences_scored": int(positions.any(1).sum()),
                "forward_rows": forward_rows}
        return Flags(flagged=flagged, info={"bki": info})


register_defense("bki", BKI)
