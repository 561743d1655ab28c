import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # These tests push tiny tensors through many differently shaped layers. With 2 OpenMP
    # threads on a shared 2-core machine the threads spin-wait on each other at every op:
    # densenet121 at 32 px took 11 s instead of 0.15 s. One thread is also deterministic.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
