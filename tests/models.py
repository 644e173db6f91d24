"""Tiny, seeded model builders and inputs shared by the tests.

Everything here is small enough for a forward pass in milliseconds on one CPU
core, and seeded so that two calls build the same model and the same inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOCAB = 100
HIDDEN = 32
PROBE_LENGTH = 12  # tokens per probe example in the recording tests


def tiny_bert(seed: int = 0, *, dropout: float = 0.1):
    """A 2-layer BertForSequenceClassification (hidden 32, 2 heads, 2 labels).

    Built under a forked RNG so building it does not move the global torch seed.
    Dropout is on by default, so train-mode forwards are random.
    """
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertForSequenceClassification(config)


def random_encodings(
    n: int, length: int, vocab: int = VOCAB, seed: int = 0, pad_from: int | None = None
) -> dict[str, torch.Tensor]:
    """Random BERT inputs: ``input_ids``, ``attention_mask``, ``token_type_ids``.

    Without ``pad_from`` every row is full length. With it, row ``i`` keeps a
    random number of real tokens in ``[pad_from, length]`` and is padded (id 0,
    mask 0) after them; the first row is always full length and the second (if
    any) is padded from position ``pad_from`` exactly, so there is always
    padding to check.
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(n, length))
    if pad_from is None:
        lengths = np.full(n, length)
    else:
        if not 1 <= pad_from < length:
            raise ValueError(f"Expected 1 <= pad_from < length={length} but got {pad_from}.")
        lengths = rng.integers(pad_from, length + 1, size=n)
        lengths[0] = length
        if n > 1:
            lengths[1] = pad_from
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    return {
        "input_ids": torch.as_tensor(ids, dtype=torch.long),
        "attention_mask": torch.as_tensor(mask, dtype=torch.long),
        "token_type_ids": torch.zeros((n, length), dtype=torch.long),
    }


def random_labels(n: int, seed: int = 0, num_labels: int = 2) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed + 1).integers(0, num_labels, size=n))


def forward_hooks(model: nn.Module) -> int:
    """How many forward (and forward pre-) hooks are registered anywhere in ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
