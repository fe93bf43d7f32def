"""Repository-wide pytest setup."""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread per test process.

    ``make test`` runs one pytest worker per core; torch's default of one thread per core on top of that
    oversubscribes the CPU, and spinning OpenMP threads then make small ops several times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
