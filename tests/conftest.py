"""Test setup: no network, no display."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def single_thread():
    """Tests use tiny models and arrays: torch's intra-op threads only add
    overhead, and on a busy 2-core machine their spin-waits slow tiny ops by
    orders of magnitude. Code that wants threads (the demo) sets them itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
