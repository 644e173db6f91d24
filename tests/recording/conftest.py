"""Fixtures for the recording tests: a tiny BERT, padded probe sets, a loop."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # tests/models.py, whatever pytest's import mode
    sys.path.insert(0, str(TESTS))

from models import PROBE_LENGTH as LENGTH  # noqa: E402
from models import random_encodings, random_labels, tiny_bert  # noqa: E402

from freqlens.recording import ProbeSet  # noqa: E402

N_CLEAN = 10
N_BACKDOOR = 6



@pytest.fixture
def bert():
    """A fresh tiny BERT (seed 0), in train mode as after construction."""
    return tiny_bert()


@pytest.fixture
def encodings():
    """Ten padded examples of length 12 (row 1 padded from position 4)."""
    return random_encodings(N_CLEAN, LENGTH, seed=1, pad_from=4)


@pytest.fixture
def probes(encodings):
    """A clean set with texts and a backdoor set, both padded."""
    clean = ProbeSet(
        "clean", encodings, random_labels(N_CLEAN, seed=1), texts=[f"text {i}" for i in range(N_CLEAN)]
    )
    backdoor = ProbeSet(
        "backdoor",
        random_encodings(N_BACKDOOR, LENGTH, seed=2, pad_from=6),
        torch.ones(N_BACKDOOR, dtype=torch.long),
        poison=[True] * N_BACKDOOR,
    )
    return [clean, backdoor]


@pytest.fixture
def directory(tmp_path):
    return tmp_path / "trajectory"


def _manual_loop(model, recorder, steps: int, *, total_steps=None, seed: int = 0) -> list[bool]:
    """A plain PyTorch loop: start the recorder, AdamW steps, ``recorder.step`` after each.

    Returns what each ``recorder.step`` call returned.
    """
    batch = random_encodings(8, LENGTH, seed=seed + 10, pad_from=5)
    labels = random_labels(8, seed=seed + 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    recorder.start(model, total_steps=total_steps)
    model.train()
    recorded = []
    for step in range(1, steps + 1):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recorded.append(recorder.step(step, loss=float(loss.detach())))
    return recorded


@pytest.fixture
def manual_loop():
    """The plain PyTorch training loop above, as a function."""
    return _manual_loop
