import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """The kernels here are tiny: torch's intra-op threads only add overhead, and
    on a busy 2-core machine their spin-waits make each op far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
