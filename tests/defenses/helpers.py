"""Shared pieces of the defense tests: the four tiny families, their inputs, logits, noise."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # tests/models.py, whatever pytest's import mode
    sys.path.insert(0, str(TESTS))

from models import padded_encodings, tiny_bert, tiny_gpt2, tiny_llama, tiny_roberta

FAMILIES = ("bert", "roberta", "gpt2", "llama")
DECODERS = ("gpt2", "llama")
BUILDERS = {"bert": tiny_bert, "roberta": tiny_roberta, "gpt2": tiny_gpt2, "llama": tiny_llama}
PAD_ID = {"bert": 0, "roberta": 1, "gpt2": 0, "llama": 0}


def build(family: str, seed: int = 0, *, dropout: float = 0.0):
    """A tiny sequence classifier of ``family`` (hidden 32, 2 layers), seeded, dropout off by default."""
    return BUILDERS[family](seed, dropout=dropout)


def inputs(family: str, n: int = 4, length: int = 8, seed: int = 3) -> dict[str, torch.Tensor]:
    """Right-padded inputs that ``family`` reads (row 1 padded from position 4)."""
    return padded_encodings(n, length, seed=seed, pad_from=4, pad_id=PAD_ID[family],
                            token_type_ids=family == "bert")


def labels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor([(i + seed) % 2 for i in range(n)])


def logits(model: torch.nn.Module, encodings: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eval-mode logits, no gradients."""
    model.eval()
    with torch.no_grad():
        return model(**encodings).logits.detach().clone()


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Add seeded noise to every trainable parameter (stands in for training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}
