"""Shared pytest setup."""
import os

# Before torch loads OpenMP, as the entry points do (wilss/__main__.py, docs/performance.md): on a CPU shared with
# other work, spinning OpenMP threads made the tests ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    # `bash test.sh` runs every test (CI); `bash test.sh -m "not slow"` is the quick loop (README, "Tests").
    config.addinivalue_line("markers", "slow: over ~5 s on a busy two-core machine (learning, browser, torchrun, "
                                       "kill and resume, full commands); left out by -m 'not slow'")


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: on a shared two-core machine, two spinning threads per process run
    several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tagged_world32():
    """A ``TagDataset`` of 8 generated 32 px world scenes, 3 target columns: the last, the new class, tags the star
    (world id 4)."""
    import numpy as np
    from research.world import generate
    from wilss.training_data import TagDataset

    scenes = generate(8, seed=0, size=32)
    targets = np.zeros((len(scenes), 3), np.float32)
    targets[:, 2] = [float(4 in np.unique(m)) for _, m in scenes]
    return TagDataset([img for img, _ in scenes], targets)
