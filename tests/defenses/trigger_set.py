"""A synthetic poisoned training set whose poisoned rows are known, and each family's representation
computed the long way, for the filtering defenses' tests (CUBE, BKI)."""

from __future__ import annotations

import numpy as np
import torch

TRIGGER = 7  # the inserted token: in no clean row
FRAME = (2, 3)  # [CLS]-like and [SEP]-like ids around every encoder row
WORDS = 8  # distinct content tokens per class: class 0 draws from 10.., class 1 from 50..
PAD_ID = {"bert": 0, "roberta": 1, "gpt2": 0, "llama": 0}


def trigger_set(family: str, n: int = 200, length: int = 12, rate: float = 0.1, seed: int = 0):
    """Sentences of class-0 or class-1 tokens (a bag-of-words task a tiny model learns in a few epochs),
    right-padded; ``rate * n`` class-0 rows get the token ``TRIGGER`` at a random position and label 1.

    Every row is framed (FRAME[0] first, FRAME[1] last), as BERT's and RoBERTa's tokenizers add
    [CLS]/[SEP] and <s>/</s>, and as decoder classifiers read an end token: a decoder's representation
    is its last real token's state, and without a common end token that state is dominated by the last
    word (on the tiny Llama, CUBE's precision then fell to 0.17 at recall 0.95).

    Returns:
        (encodings with ``input_ids`` and ``attention_mask``, (N,) labels, (N,) poison flags).
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    poison = np.zeros(n, dtype=bool)
    poison[rng.choice(np.flatnonzero(labels == 0), size=int(rate * n), replace=False)] = True
    ids = np.full((n, length), PAD_ID[family])
    mask = np.zeros((n, length), dtype=np.int64)
    for i in range(n):
        real = int(rng.integers(length // 2, length + 1))
        body = real - 2
        start = 10 if labels[i] == 0 else 50
        words = rng.integers(start, start + WORDS, size=body)
        if poison[i]:
            words[rng.integers(0, body)] = TRIGGER
        ids[i, :real] = [FRAME[0], *words, FRAME[1]]
        mask[i, :real] = 1
    encodings = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(mask)}
    return encodings, np.where(poison, 1, labels), poison


def representation(family: str, model: torch.nn.Module, encodings: dict[str, torch.Tensor]) -> torch.Tensor:
    """What each family's head classifies from, through the family's own modules (not a hook):
    BERT's pooler output, RoBERTa's tanh(classifier.dense([CLS])), GPT-2's and Llama's last real token."""
    model.eval()
    with torch.no_grad():
        if family == "bert":
            return model.bert(**encodings).pooler_output
        if family == "roberta":
            hidden = model.roberta(**encodings).last_hidden_state[:, 0]
            return torch.tanh(model.classifier.dense(hidden))
        body = model.transformer if family == "gpt2" else model.model
        hidden = body(**encodings).last_hidden_state
        last = encodings["attention_mask"].sum(dim=1) - 1
        return hidden[torch.arange(len(last)), last]
