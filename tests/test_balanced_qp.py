"""Solution 2 (QP weights): property I6 of the spec, checked against NumPy float64 linear algebra."""
import numpy as np
import pytest
import torch
from torch import nn

from balanced_rd import BalancedQP, CautiousAdam, qp_weights, task_gradients


def reference_weights(gradients: np.ndarray) -> np.ndarray:
    gram = gradients @ gradients.T
    solution = np.linalg.solve(gram, np.ones(len(gram)))
    return solution / solution.sum()


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_i6_equal_first_order_progress(n_tasks):
    rng = np.random.default_rng(n_tasks)
    shared = rng.normal(size=50)
    gradients = rng.normal(size=(n_tasks, 50)) + 1.5 * shared  # correlated, as R and D gradients are
    weights = qp_weights(torch.from_numpy(gradients @ gradients.T), qp_eps=0.0).numpy()
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(weights, reference_weights(gradients), rtol=1e-9, atol=1e-12)
    direction = weights @ gradients
    mu = 1.0 / np.linalg.solve(gradients @ gradients.T, np.ones(n_tasks)).sum()
    np.testing.assert_allclose(gradients @ direction, np.full(n_tasks, mu), rtol=1e-9, atol=1e-12)
    assert mu > 0


def test_i6_closed_form_matches_solve_and_weights_can_be_negative():
    rng = np.random.default_rng(0)
    base = rng.normal(size=100)
    gradients = np.stack([base + 0.1 * rng.normal(size=100), 3.0 * base + 0.1 * rng.normal(size=100)])
    gram = gradients @ gradients.T
    closed = qp_weights(torch.from_numpy(gram), qp_eps=0.0).numpy()
    np.testing.assert_allclose(closed, reference_weights(gradients), rtol=1e-9)
    assert closed.min() < 0  # strongly correlated gradients


def test_i6_parallel_gradients_stay_finite():
    g = torch.randn(30, dtype=torch.float64)
    for gradients in (torch.stack([g, g]), torch.stack([g, 2 * g]), torch.stack([g, g, 3 * g])):
        weights = qp_weights(gradients @ gradients.T)
        assert torch.isfinite(weights).all() and weights.sum().item() == pytest.approx(1.0)
    assert torch.allclose(qp_weights(torch.zeros(2, 2)), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_task_gradients_matches_separate_backward_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(6, 3)
    y = model(x)
    losses = [y[:, 0].pow(2).mean(), y[:, 1].abs().mean()]
    matrix = task_gradients(losses, list(model.parameters()))
    for index in range(2):
        model.zero_grad()
        y = model(x)
        [y[:, 0].pow(2).mean(), y[:, 1].abs().mean()][index].backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(matrix[index], expected)


def test_balanced_qp_backward_and_step():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, t = torch.randn(16, 3), torch.randn(16, 2)

    def losses():
        y = model(x)
        return [(y[:, 0] - t[:, 0]).pow(2).mean() * 20.0, (y[:, 1] - t[:, 1]).abs().mean()]

    params = list(model.parameters())
    values = torch.stack([l.detach() for l in losses()])
    raw = task_gradients(losses(), params).double()
    shifted = (values + 1.0 + 1e-8).double()  # min_losses = -1
    log_grads = raw / shifted[:, None]
    weights = torch.from_numpy(reference_weights(log_grads.numpy()))

    opt = BalancedQP(params, lr=1e-2, qp_eps=0.0, task_names=["d", "r"])
    got = opt.backward(losses())
    torch.testing.assert_close(got.double(), weights, rtol=1e-4, atol=1e-6)
    combined = torch.cat([p.grad.reshape(-1) for p in params]).double()
    coefficients = (weights / shifted) / (weights.abs() / shifted).sum()
    torch.testing.assert_close(combined, coefficients @ raw, rtol=1e-4, atol=1e-7)
    # equal first-order decrease of both log losses along the combined gradient
    progress = log_grads @ combined
    assert progress[0].item() == pytest.approx(progress[1].item(), rel=1e-3)
    assert set(opt.task_weight_dict()) == {"weight_d", "weight_r", "coef_d", "coef_r"}

    before = [p.detach().clone() for p in params]
    reference = CautiousAdam([nn.Parameter(b.clone()) for b in before], lr=1e-2)
    for r, p in zip(reference.param_groups[0]["params"], params):
        r.grad = p.grad.clone()
    opt.step()
    reference.step()
    for p, r in zip(params, reference.param_groups[0]["params"]):
        assert torch.equal(p.detach(), r.detach())
    before_total = sum(values).item()
    for _ in range(30):
        opt.zero_grad()
        opt.backward(losses())
        opt.step()
    assert sum(l.item() for l in losses()) < before_total


@pytest.mark.parametrize("qp_eps", [0.01, 0.1, 1.0, 10.0])
def test_the_ridge_bounds_two_task_weights_whatever_the_gradients(qp_eps):
    # |w - 1/2| <= 1 / (2 sqrt(qp_eps (qp_eps + 2))) for any 2x2 Gram matrix: with Q = [[1, c], [c, s^2]] the
    # deviation is (s^2 - 1) / (2 ((1 + s^2)(1 + qp_eps) - 2c)), largest for parallel gradients (c = s) of norm
    # ratio s = 1 + qp_eps + sqrt(qp_eps (qp_eps + 2)), where it equals the bound.
    rng = np.random.default_rng(1)
    bound = 1 / (2 * np.sqrt(qp_eps * (qp_eps + 2)))
    worst = 0.0
    for _ in range(2000):
        gradients = rng.normal(size=(2, 6)) * rng.lognormal(sigma=3, size=(2, 1))
        weights = qp_weights(torch.from_numpy(gradients @ gradients.T), qp_eps=qp_eps).numpy()
        worst = max(worst, abs(weights[0] - 0.5))
    assert worst <= bound * (1 + 1e-9)
    ratio = 1 + qp_eps + np.sqrt(qp_eps * (qp_eps + 2))
    extreme = qp_weights(torch.tensor([[1.0, ratio], [ratio, ratio ** 2]], dtype=torch.float64), qp_eps=qp_eps)
    assert abs(float(extreme[0]) - 0.5) == pytest.approx(bound, rel=1e-9)


def test_tracked_changes_predict_the_realised_ones_for_a_small_step():
    # Two quadratic task losses of one parameter vector: for a small lr the first-order prediction of each log
    # loss's change matches the realised change to second order.
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(8, dtype=torch.float64))
    targets = torch.randn(2, 8, dtype=torch.float64)

    def losses():
        return torch.stack([((weight - target) ** 2).sum() for target in targets])

    optimizer = BalancedQP([weight], lr=1e-4, track_changes=True, cautious=False)
    for _ in range(3):
        optimizer.zero_grad()
        optimizer.backward(losses())
        optimizer.step()
        with torch.no_grad():
            optimizer.record_losses_after_step(losses())
        predicted, realised = optimizer.predicted_change, optimizer.realised_change
        assert (predicted < 0).all()
        np.testing.assert_allclose(realised.numpy(), predicted.numpy(), rtol=1e-3)
        record = optimizer.task_weight_dict()
        assert record["pred_dlog_task0"] == pytest.approx(float(predicted[0]))
        assert record["real_dlog_task1"] == pytest.approx(float(realised[1]))
