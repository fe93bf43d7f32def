"""Repository-wide pytest setup: single-threaded torch and a fixed RNG state per test."""
import random

import numpy as np
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


@pytest.fixture(autouse=True)
def seeded_rng():
    """Every test starts from the same global RNG state, whichever tests ran before it in its worker.

    Without this, a test that draws random weights or data without seeding sees a state that depends on
    how pytest-xdist distributed the tests, so a value on a rounding boundary can differ between runs.
    """
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
