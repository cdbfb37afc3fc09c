import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: on a shared two-core machine, two spinning threads per process run
    several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
