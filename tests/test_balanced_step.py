"""training_step: the exact step equals the hand-written sequence; cheaper options, noise sharing, AMP skip."""
import copy
import math

import pytest
import torch
from torch import nn

from balanced_rd import Balanced, BalancedQP
from common.train.step import training_step
from common.errors import UserError


class NoisyNet(nn.Module):
    """Tiny conv net with additive uniform noise in training, like a quantisation proxy."""

    def __init__(self, noise=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 3, 3, padding=1)
        self.noise = noise
        self.overflow = False

    def forward(self, x):
        latent = self.conv(x)
        if self.noise and self.training:
            latent = latent + torch.rand_like(latent) - 0.5
        if self.overflow:
            latent.register_hook(lambda grad: grad * math.inf)
        return self.out(torch.relu(latent)), latent


def per_sample_losses(model, batch):
    x_hat, latent = model(batch)
    return [((x_hat - batch) ** 2).flatten(1).mean(1) * 100.0, latent.abs().flatten(1).mean(1)]


def scalar_losses(model, batch):
    return [loss.mean() for loss in per_sample_losses(model, batch)]


def setup(seed=0, noise=False, **kwargs):
    torch.manual_seed(seed)
    model = NoisyNet(noise)
    return model, Balanced(model.parameters(), lr=1e-2, **kwargs)


def setup_with_twin():
    """A model with Balanced, and an identical copy to drive by hand with the public optimizer API."""
    model, opt = setup()
    twin = copy.deepcopy(model)
    return model, opt, twin, Balanced(twin.parameters(), lr=1e-2)


def hand_written_model_step(twin, twin_opt, batch, loss_fn, clip_max_norm=None):
    """weighted_loss -> backward -> (clip) -> step on the twin; returns the raw task losses."""
    twin_opt.zero_grad()
    raw = loss_fn(twin, batch)
    twin_opt.weighted_loss([loss.mean() for loss in raw]).backward()
    if clip_max_norm is not None:
        torch.nn.utils.clip_grad_norm_(twin.parameters(), clip_max_norm)
    twin_opt.step()
    return raw


def data(n=6, batch=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 3, 8, 8, generator=gen) for _ in range(n)]


def test_exact_step_equals_hand_written_sequence():
    model, opt, twin, twin_opt = setup_with_twin()
    for index, batch in enumerate(data()):
        result = training_step(model, opt, batch, per_sample_losses, clip_max_norm=1.0, step_index=index)
        assert result.model_step_taken and result.weights_updated
        hand_written_model_step(twin, twin_opt, batch, scalar_losses, clip_max_norm=1.0)
        with torch.no_grad():
            twin_opt.update_task_weights(scalar_losses(twin, batch))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert torch.equal(opt.logits, twin_opt.logits) and not torch.equal(opt.logits, torch.zeros(2))


def test_plain_optimizer_minimises_the_sum():
    model, _ = setup()
    twin = copy.deepcopy(model)
    opt, twin_opt = torch.optim.Adam(model.parameters(), lr=1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2)
    for batch in data(3):
        result = training_step(model, opt, batch, scalar_losses)
        assert not result.weights_updated
        twin_opt.zero_grad()
        sum(scalar_losses(twin, batch)).backward()
        twin_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_weight_update_every_k_steps():
    model, opt = setup()
    flags = []
    for index, batch in enumerate(data(6)):
        before = opt.logits.clone()
        flags.append(training_step(model, opt, batch, scalar_losses, step_index=index,
                                   weight_update_every=3).weights_updated)
        assert flags[-1] != torch.equal(before, opt.logits)
    assert flags == [True, False, False, True, False, False]


def test_delta_subset_uses_before_and_after_losses_of_the_same_samples():
    model, opt, twin, twin_opt = setup_with_twin()
    for batch in data(4):
        training_step(model, opt, batch, per_sample_losses, delta_subset=2)
        raw = hand_written_model_step(twin, twin_opt, batch, per_sample_losses)
        with torch.no_grad():
            after = [loss.mean() for loss in per_sample_losses(twin, batch[:2])]
        twin_opt.update_task_weights(after, reference_losses=[loss.detach()[:2].mean() for loss in raw])
    assert torch.equal(opt.logits, twin_opt.logits) and not torch.equal(opt.logits, torch.zeros(2))


def test_delta_subset_with_scalar_losses_evaluates_the_subset_before_the_step():
    model, opt, twin, twin_opt = setup_with_twin()
    for batch in data(4):
        training_step(model, opt, batch, scalar_losses, delta_subset=1)
        with torch.no_grad():
            reference = scalar_losses(twin, batch[:1])
        hand_written_model_step(twin, twin_opt, batch, scalar_losses)
        with torch.no_grad():
            twin_opt.update_task_weights(scalar_losses(twin, batch[:1]), reference_losses=reference)
    assert torch.equal(opt.logits, twin_opt.logits) and not torch.equal(opt.logits, torch.zeros(2))


def test_share_noise_replays_the_training_noise_and_keeps_the_rng_stream():
    batch = data(1)[0]
    for share in (True, False):
        model, opt = setup(noise=True)
        opt.param_groups[0]["lr"] = 0.0  # parameters stay put: any delta is pure noise
        torch.manual_seed(123)
        training_step(model, opt, batch, scalar_losses, share_noise=share)
        if share:
            after_shared = torch.rand(3)
        assert torch.equal(opt.logits, torch.zeros(2)) == share
    torch.manual_seed(123)
    with torch.no_grad():
        scalar_losses(model, batch)  # the training forward alone
    assert torch.equal(torch.rand(3), after_shared)
    with pytest.raises(UserError, match="share_noise"):
        training_step(model, opt, batch, per_sample_losses, share_noise=True, delta_subset=1)


def test_grad_scaler_overflow_skips_model_and_logit_updates():
    model, opt = setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    batches = data(3)
    training_step(model, opt, batches[0], scalar_losses, scaler=scaler, clip_max_norm=1.0)
    params, logits = [p.detach().clone() for p in model.parameters()], opt.logits.clone()
    model.overflow = True
    result = training_step(model, opt, batches[1], scalar_losses, scaler=scaler, clip_max_norm=1.0, step_index=1)
    assert not result.model_step_taken and not result.weights_updated
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert torch.equal(opt.logits, logits) and scaler.get_scale() == 128.0
    model.overflow = False
    assert training_step(model, opt, batches[2], scalar_losses, scaler=scaler, step_index=2).weights_updated
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.overflow = True
    assert not training_step(model, adam, batches[0], scalar_losses, scaler=scaler).model_step_taken
    model.overflow = False
    assert training_step(model, adam, batches[0], scalar_losses, scaler=scaler).model_step_taken


def test_bf16_autocast_keeps_famo_arithmetic_in_fp32():
    model, opt = setup()
    for index, batch in enumerate(data(3)):
        result = training_step(model, opt, batch, scalar_losses, amp_dtype=torch.bfloat16, step_index=index)
        assert result.weights_updated and result.losses.dtype == torch.float32
    assert opt.logits.dtype == torch.float32 and torch.isfinite(opt.logits).all()
    assert not torch.equal(opt.logits, torch.zeros(2))


def test_balanced_qp_through_the_step_helper():
    torch.manual_seed(0)
    model = NoisyNet(noise=False)
    opt = BalancedQP(model.parameters(), lr=1e-2)
    batch = data(1)[0]
    first = sum(l.item() for l in scalar_losses(model, batch))
    for _ in range(8):
        training_step(model, opt, batch, scalar_losses, clip_max_norm=1.0)
    assert sum(l.item() for l in scalar_losses(model, batch)) < first
    with pytest.raises(UserError, match="GradScaler"):
        training_step(model, opt, batch, scalar_losses, scaler=torch.amp.GradScaler("cpu"))
