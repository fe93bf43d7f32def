"""Run under torchrun by test_ddp.py: train with the engine, then dump this rank's parameters."""
import sys
from pathlib import Path

import torch

from common.train.engine import Trainer
from common.train.options import parse_config

if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    trainer = Trainer(parse_config(sys.argv[2:]))
    rank = trainer.dist.rank
    initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.fit()
    state = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    state["__moved__"] = torch.tensor([not torch.equal(initial[n], state[n]) for n in initial])
    if hasattr(trainer.optimizer, "task_weights"):
        state["__task_weights__"] = torch.as_tensor(trainer.optimizer.task_weights).detach().clone()
    torch.save(state, out_dir / f"rank{rank}.pt")
