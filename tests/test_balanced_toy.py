"""I7: on a two-task problem with loss scales 1 and 1000 and a shared bottleneck, Balanced lowers both log
losses at similar rates; Adam on the plain sum serves the large-scale task and neglects the other."""
import math

import pytest
import torch
from torch import nn

from balanced_rd import Balanced

STEPS = 400
CHECKPOINTS = (100, 200, STEPS - 1)


class SharedBottleneck(nn.Module):
    """Shared 8 -> 3 linear map, one 3 -> 4 head per task; each task needs rank 4, so they compete."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(8, 3, bias=False)
        self.heads = nn.ModuleList([nn.Linear(3, 4, bias=False), nn.Linear(3, 4, bias=False)])

    def forward(self, x):
        hidden = self.shared(x)
        return [head(hidden) for head in self.heads]


def make_problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    targets = [x @ torch.randn(4, 8, generator=gen).T for _ in range(2)]

    def task_losses(model):
        first, second = model(x)
        return [((first - targets[0]) ** 2).mean(), 1000.0 * ((second - targets[1]) ** 2).mean()]

    return task_losses


def log_loss_decreases(balanced: bool) -> dict[int, tuple[float, float]]:
    task_losses = make_problem()
    torch.manual_seed(1)
    model = SharedBottleneck()
    if balanced:
        opt = Balanced(model.parameters(), lr=0.01, gamma=0.001, min_losses=0.0)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
    start = [math.log(loss.item()) for loss in task_losses(model)]
    decreases = {}
    for step in range(STEPS):
        losses = task_losses(model)
        if step in CHECKPOINTS:
            decreases[step] = tuple(s - math.log(loss.item()) for s, loss in zip(start, losses))
        opt.zero_grad()
        (opt.weighted_loss(losses) if balanced else sum(losses)).backward()
        opt.step()
        if balanced:
            with torch.no_grad():
                opt.update_task_weights(task_losses(model))
    return decreases


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_i7_balanced_keeps_both_log_losses_falling_adam_does_not(one_thread):
    balanced, adam = log_loss_decreases(True), log_loss_decreases(False)
    for step in CHECKPOINTS:
        first, second = balanced[step]
        assert first > 1.0 and second > 1.0, (step, balanced[step])
        assert 2 / 3 <= first / second <= 3 / 2, (step, balanced[step])
    first, second = adam[STEPS - 1]
    assert first / second < 1 / 3, adam  # the unit-scale task is neglected
    assert first < 0.7 < 1.0 < balanced[STEPS - 1][0]
