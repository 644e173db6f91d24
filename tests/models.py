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


# ------------------------------------------------- more families (test_model_families)
def _seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_roberta(seed: int = 0, *, dropout: float = 0.1):
    """A 2-layer RobertaForSequenceClassification (hidden 32, 2 heads, 2 labels).

    RoBERTa's padding id is 1 and its position ids start at ``padding_idx + 1``,
    so ``max_position_embeddings`` leaves room for that offset.
    """
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return _seeded(lambda: RobertaForSequenceClassification(config), seed)


def tiny_gpt2(seed: int = 0, *, dropout: float = 0.1):
    """A 2-layer GPT2ForSequenceClassification (hidden 32, 2 heads, 2 labels, pad id 0).

    ``pad_token_id`` is set: GPT-2 classification pools the last non-padding
    token and refuses batches of padded inputs without it.
    """
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=2,
        n_head=2,
        n_inner=64,
        n_positions=32,
        pad_token_id=0,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        num_labels=2,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return _seeded(lambda: GPT2ForSequenceClassification(config), seed)


def tiny_llama(seed: int = 0, *, dropout: float = 0.1):
    """A 2-layer LlamaForSequenceClassification (hidden 32, 4 heads, 2 kv heads, pad id 0)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        pad_token_id=0,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        num_labels=2,
        attention_dropout=dropout,
    )
    return _seeded(lambda: LlamaForSequenceClassification(config), seed)


def padded_encodings(
    n: int,
    length: int,
    *,
    seed: int = 0,
    pad_from: int = 4,
    pad_id: int = 0,
    side: str = "right",
    token_type_ids: bool = False,
) -> dict[str, torch.Tensor]:
    """Random padded inputs for any family: ids, mask and, if asked, zero token type ids.

    Like :func:`random_encodings` with ``pad_from`` (row 0 full length, row 1
    with ``pad_from`` real tokens), but the padding id is ``pad_id``, real
    tokens never equal it (ids from ``pad_id + 1``, so that RoBERTa with pad
    id 1 sees no stray padding), and the padding is on ``side`` ("right" or
    "left").
    """
    if side not in ("right", "left"):
        raise ValueError(f"Expected side 'right' or 'left' but got {side!r}.")
    base = random_encodings(n, length, vocab=VOCAB - pad_id, seed=seed, pad_from=pad_from)
    mask = base["attention_mask"]
    ids = torch.where(mask.bool(), base["input_ids"] + pad_id, torch.full_like(mask, pad_id))
    if side == "left":
        ids, mask = ids.flip(1), mask.flip(1)
    encodings = {"input_ids": ids, "attention_mask": mask}
    if token_type_ids:
        encodings["token_type_ids"] = torch.zeros_like(ids)
    return encodings


def save_tiny_bert(folder, tokenizer=None, *, layers: int = 2, dropout: float | None = None,
                   seed: int | None = None):
    """A randomly initialised BertForSequenceClassification (hidden 32, 64 positions) and the demo's
    tokenizer (or ``tokenizer``) saved in ``folder``, for ``from_pretrained`` / ``freqlens run``;
    ``dropout`` (e.g. 0.0: a run then takes the same steps on several processes) replaces BERT's
    0.1, ``seed`` seeds torch before the weights are drawn."""
    from transformers import BertConfig, BertForSequenceClassification

    from freqlens.demo.model import make_tokenizer

    tokenizer = tokenizer or make_tokenizer()
    rates = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        num_labels=2, **rates)
    if seed is not None:
        torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_clean_csvs(folder, *, num_train: int = 160, num_eval: int = 40):
    """The demo's generated task, unpoisoned, as train/dev/test CSV files (text, label) in ``folder``."""
    import csv

    from freqlens.demo.task import TaskConfig, make_task

    task = make_task(TaskConfig(num_train=num_train, num_dev=num_eval, num_test=num_eval, poison_rate=0.0))
    folder.mkdir()
    for name, split in (("train", task.train), ("dev", task.dev_clean), ("test", task.test_clean)):
        with open(folder / f"{name}.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["text", "label"])
            writer.writerows(zip(split.texts, split.labels.tolist()))
    return folder
