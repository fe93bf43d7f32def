"""Cautious Adam core: properties C1-C6 of the spec, against torch.optim.Adam/AdamW as the reference."""
import pytest
import torch
from torch import nn

from balanced_rd import Balanced, CautiousAdam

LR = 0.01


def run(optimizer_cls, start, grads, **kwargs):
    """Apply the gradient sequence ``grads`` to a copy of ``start``; returns (param, optimizer, updates)."""
    param = nn.Parameter(start.clone())
    opt = optimizer_cls([param], lr=LR, **kwargs)
    updates = []
    for grad in grads:
        before = param.detach().clone()
        param.grad = grad.clone()
        opt.step()
        updates.append(param.detach() - before)
    return param, opt, updates


def random_grads(n, size=32, seed=0, positive=False):
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(size, generator=gen) for _ in range(n)]
    return [g.abs() + 0.01 for g in grads] if positive else grads


START = torch.linspace(-1, 1, 32)


def test_c1_disagreeing_coordinates_get_no_update_except_weight_decay():
    g1 = torch.ones(6)
    g2 = torch.tensor([-0.5, 1.0, -0.5, 1.0, 1.0, 1.0])  # m2 = 0.09 + 0.1 g2 > 0 everywhere
    start = torch.arange(1.0, 7.0)
    for wd in (0.0, 0.1):
        param, opt, updates = run(CautiousAdam, start, [g1, g2], weight_decay=wd)
        masked = torch.tensor([True, False, True, False, False, False])
        after_first = start + updates[0]
        assert torch.equal(param.detach()[masked], after_first[masked] * (1 - LR * wd))
        assert (updates[1][~masked] != 0).all()


def test_c2_reduces_to_adam_when_all_coordinates_agree():
    grads = random_grads(20, positive=True)
    ours, _, _ = run(CautiousAdam, START, grads)
    reference, _, _ = run(torch.optim.Adam, START, grads)
    # Parameters of size <= 1 (float32 spacing 1.2e-7 there); the two implementations may round each of the 20
    # updates differently by one unit, so they may drift apart by up to 20 units. A real difference is lr-sized.
    torch.testing.assert_close(ours, reference, atol=20 * 1.2e-7, rtol=0)


def test_c2_non_cautious_is_exactly_adam_and_adamw():
    grads = random_grads(25, seed=1)
    ours, _, _ = run(CautiousAdam, START, grads, cautious=False)
    reference, _, _ = run(torch.optim.Adam, START, grads)
    assert torch.equal(ours, reference)
    ours, _, _ = run(CautiousAdam, START, grads, cautious=False, weight_decay=0.05)
    reference, _, _ = run(torch.optim.AdamW, START, grads, weight_decay=0.05)
    assert torch.equal(ours, reference)


def test_c2_first_step_equals_adam_when_no_gradient_is_zero():
    grads = random_grads(1, seed=2)
    ours, _, _ = run(CautiousAdam, START, grads)
    reference, _, _ = run(torch.optim.Adam, START, grads)
    assert torch.equal(ours, reference)


def _second_step_updates(g2, **kwargs):
    g1 = torch.ones(20)
    _, _, cautious = run(CautiousAdam, torch.zeros(20), [g1, g2], **kwargs)
    _, _, adam = run(torch.optim.Adam, torch.zeros(20), [g1, g2])
    return cautious[1], adam[1]


def test_c3_rescale_by_inverse_mask_mean_per_tensor():
    g2 = torch.ones(20)
    g2[:10] = -0.5  # half the coordinates disagree: mean(mask) = 0.5
    cautious, adam = _second_step_updates(g2)
    assert torch.equal(cautious[:10], torch.zeros(10))
    torch.testing.assert_close(cautious[10:], 2.0 * adam[10:], rtol=1e-6, atol=0)


@pytest.mark.parametrize("cap,expected_scale", [(10.0, 10.0), (None, 20.0), (50.0, 20.0)])
def test_c3_cap_on_the_rescaling(cap, expected_scale):
    g2 = torch.full((20,), -0.5)
    g2[0] = 1.0  # one agreeing coordinate in twenty
    cautious, adam = _second_step_updates(g2, max_mask_scale=cap)
    torch.testing.assert_close(cautious[0], expected_scale * adam[0], rtol=1e-6, atol=0)
    assert torch.equal(cautious[1:], torch.zeros(19))


def test_c3_all_disagree_gives_zero_update_without_nan():
    cautious, _ = _second_step_updates(torch.full((20,), -0.5))
    assert torch.equal(cautious, torch.zeros(20))


def test_c3_mask_mean_is_per_tensor():
    """Tensor a has 1 of 4 coordinates masked (scale 4/3); tensor b has none (scale 1)."""
    params = [nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))]
    references = [nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))]
    opt, adam = CautiousAdam(params, lr=LR), torch.optim.Adam(references, lr=LR)
    for grad_a in (torch.ones(4), torch.tensor([-0.5, 1.0, 1.0, 1.0])):
        before = [p.detach().clone() for p in params + references]
        for p, g in zip(params + references, (grad_a, torch.ones(4), grad_a, torch.ones(4))):
            p.grad = g.clone()
        opt.step()
        adam.step()
    update_a, update_b, adam_a, adam_b = (p.detach() - b for p, b in zip(params + references, before))
    assert update_a[0] == 0
    torch.testing.assert_close(update_a[1:], adam_a[1:] * 4 / 3, rtol=1e-6, atol=0)
    torch.testing.assert_close(update_b, adam_b, rtol=1e-6, atol=0)


def test_c4_update_never_ascends_while_adam_can():
    g1, g2 = torch.ones(2), torch.tensor([-0.5, 1e-4])
    _, _, cautious = run(CautiousAdam, torch.zeros(2), [g1, g2])
    _, _, adam = run(torch.optim.Adam, torch.zeros(2), [g1, g2])
    assert torch.dot(adam[1], g2) > 0 >= torch.dot(cautious[1], g2)
    grads = random_grads(50, seed=3)
    _, _, updates = run(CautiousAdam, START, grads)
    assert all(torch.dot(u, g) <= 0 for u, g in zip(updates, grads))


def test_c5_moments_are_never_masked():
    grads = random_grads(30, seed=4)
    ours, opt, _ = run(CautiousAdam, START, grads)
    reference, adam, _ = run(torch.optim.Adam, START, grads)
    state, reference_state = opt.state[opt.param_groups[0]["params"][0]], adam.state[reference]
    assert torch.equal(state["exp_avg"], reference_state["exp_avg"])
    assert torch.equal(state["exp_avg_sq"], reference_state["exp_avg_sq"])
    assert not torch.allclose(ours, reference)


def test_c6_mask_invariant_to_positive_gradient_scale():
    grads = random_grads(30, seed=5)
    _, _, plain = run(CautiousAdam, START, grads)
    _, _, scaled = run(CautiousAdam, START, [1000.0 * g for g in grads])
    for u, v in zip(plain, scaled):
        assert torch.equal(u == 0, v == 0)
    assert any((u == 0).any() for u in plain)


def test_low_precision_parameters_use_fp32_moments():
    param = nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    opt = CautiousAdam([param], lr=LR)
    param.grad = torch.ones(8, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[param]["exp_avg"].dtype == torch.float32 and param.dtype == torch.bfloat16
    assert (param.float() < 1).all()


def test_low_precision_state_round_trip_keeps_fp32_moments():
    param = nn.Parameter(torch.linspace(-1, 1, 8, dtype=torch.bfloat16))
    opt = CautiousAdam([param], lr=LR)
    param.grad = torch.full((8,), 1e-3, dtype=torch.bfloat16)
    opt.step()
    fresh = CautiousAdam([nn.Parameter(param.detach().clone())], lr=LR)
    fresh.load_state_dict(opt.state_dict())
    state = fresh.state[fresh.param_groups[0]["params"][0]]
    assert state["exp_avg"].dtype == torch.float32
    assert torch.equal(state["exp_avg_sq"], opt.state[param]["exp_avg_sq"])


def test_balanced_model_step_is_cautious_adam():
    grads = random_grads(10, seed=6)
    ours, _, _ = run(Balanced, START, grads)
    reference, _, _ = run(CautiousAdam, START, grads)
    assert torch.equal(ours, reference)


def test_hyperparameter_errors():
    with pytest.raises(ValueError, match="betas"):
        CautiousAdam([nn.Parameter(torch.zeros(1))], lr=1e-3, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="max_mask_scale"):
        CautiousAdam([nn.Parameter(torch.zeros(1))], lr=1e-3, max_mask_scale=0.5)
