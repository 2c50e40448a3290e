import pytest
import torch

# One intra-op thread: tests are small, several run subprocesses (DDP, sweeps), and two threads
# spinning on two shared cores made some tests 10-50x slower than one.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
