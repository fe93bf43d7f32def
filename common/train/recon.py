"""Reconstruction PNGs of a fixed, ordered validation subset (seed 003 layout).

``<recon_dir>/origin/NNNNN.png`` holds the inputs, written once; ``<recon_dir>/<tag>/NNNNN.png`` the
model outputs with the same numbers, so a tag folder compares file by file with ``origin``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.data import recon_subset


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write a 3×H×W tensor in [0, 1] as an 8-bit PNG (atomically)."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    tmp.replace(path)


class ReconWriter:
    def __init__(self, folder: Path, dataset, count: int):
        self.folder = folder
        self.subset = recon_subset(dataset, count)

    def write_origin(self) -> None:
        for number, image in enumerate(self.subset):
            path = self.folder / "origin" / f"{number:05d}.png"
            if not path.exists():
                save_png(image, path)

    @torch.no_grad()
    def write(self, model: nn.Module, tag: str) -> list[torch.Tensor]:
        """Write ``<tag>/NNNNN.png`` for every image of the subset; returns the reconstructions."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        outputs = []
        for number, image in enumerate(self.subset):
            output = model(image.unsqueeze(0).to(device))["x_hat"][0]
            save_png(output, self.folder / tag / f"{number:05d}.png")
            outputs.append(output)
        model.train(was_training)
        return outputs
