"""I3: Balanced under DDP (2 gloo processes on the CPU) keeps logits and parameters identical on both ranks
and equal to one process training on the whole batch (delta and coefficients from all-reduced losses).
BalancedQP through the same step helper with a DDP-wrapped model matches one process too."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from balanced_rd import Balanced, BalancedQP
from common.train.step import training_step

WORLD = 2
STEPS = 6


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))


def global_batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 5, generator=gen), torch.randn(8, 2, generator=gen)) for _ in range(STEPS)]


def task_losses(model, batch):
    x, t = batch
    y = model(x)
    return [((y[:, 0] - t[:, 0]) ** 2).mean() * 30.0, (y[:, 1] - t[:, 1]).abs().mean()]


def train(model, optimizer, batches):
    for index, batch in enumerate(batches):
        training_step(model, optimizer, batch, task_losses, clip_max_norm=1.0, step_index=index)


def worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        local = [(x[4 * rank:4 * rank + 4], t[4 * rank:4 * rank + 4]) for x, t in global_batches()]
        results = {}
        for name, optimizer_cls in (("balanced", Balanced), ("qp", BalancedQP)):
            model = nn.parallel.DistributedDataParallel(make_model())
            optimizer = optimizer_cls(model.parameters(), lr=1e-2)
            train(model, optimizer, local)
            results[name] = {"weights": optimizer.task_weights,
                             "params": [p.detach() for p in model.module.parameters()]}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_i3_ddp_ranks_agree_and_match_single_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, optimizer_cls in (("balanced", Balanced), ("qp", BalancedQP)):
        first, second = ranks[0][name], ranks[1][name]
        assert torch.equal(first["weights"], second["weights"])
        assert all(torch.equal(a, b) for a, b in zip(first["params"], second["params"]))

        model = make_model()
        optimizer = optimizer_cls(model.parameters(), lr=1e-2)
        train(model, optimizer, global_batches())
        assert not torch.allclose(optimizer.task_weights, torch.full((2,), 0.5))
        torch.testing.assert_close(first["weights"], optimizer.task_weights, atol=1e-5, rtol=0)
        for ddp_param, param in zip(first["params"], model.parameters()):
            torch.testing.assert_close(ddp_param, param.detach(), atol=1e-5, rtol=1e-4)
