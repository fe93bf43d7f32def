"""The 11-step hierarchical coding schedule of HPCM and the packing between its three grids.

Channels are split into 8 equal groups. Scale 2 of group g is the sub-lattice ``y[2i + a_g, 2j + b_g]``
(grid H/2), scale 1 the sub-lattice ``s2[2k + c_g, 2l + d_g]`` of it (grid H/4). Which step codes a
position is periodic with period 8; the tiles below are the official masks (spec §2.3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NUM_GROUPS = 8
NUM_STEPS = 11
# Steps of each scale: scale 1 = steps 1-2, scale 2 = 3-5, scale 3 = 6-11.
SCALE_STEPS = ((1, 2), (3, 4, 5), (6, 7, 8, 9, 10, 11))
S2_PHASE = ((0, 0), (1, 1), (0, 1), (1, 0), (0, 0), (1, 1), (0, 1), (1, 0))
S1_PHASE = tuple(((g // 2) // 2, (g // 2) % 2) for g in range(NUM_GROUPS))
# Scale-1 phase assumed by the official scale-2 hyper merge (quirk B, spec §2.6).
QUIRK_S1_PHASE = tuple((0, 0) if g < 4 else (0, 1) for g in range(NUM_GROUPS))

_TILES = """
1 8 5 9 2 8 5 9 | 10 6 11 7 10 6 11 7 | 4 9 3 8 4 9 3 8 | 11 7 10 6 11 7 10 6 | 2 8 5 9 1 8 5 9 | 10 6 11 7 10 6 11 7 | 4 9 3 8 4 9 3 8 | 11 7 10 6 11 7 10 6
10 6 11 7 10 6 11 7 | 8 1 9 5 8 2 9 5 | 11 7 10 6 11 7 10 6 | 9 4 8 3 9 4 8 3 | 10 6 11 7 10 6 11 7 | 8 2 9 5 8 1 9 5 | 11 7 10 6 11 7 10 6 | 9 4 8 3 9 4 8 3
8 5 9 1 8 5 9 2 | 6 10 7 11 6 10 7 11 | 9 3 8 4 9 3 8 4 | 7 11 6 10 7 11 6 10 | 8 5 9 2 8 5 9 1 | 6 10 7 11 6 10 7 11 | 9 3 8 4 9 3 8 4 | 7 11 6 10 7 11 6 10
6 10 7 11 6 10 7 11 | 5 8 1 9 5 8 2 9 | 7 11 6 10 7 11 6 10 | 3 9 4 8 3 9 4 8 | 6 10 7 11 6 10 7 11 | 5 8 2 9 5 8 1 9 | 7 11 6 10 7 11 6 10 | 3 9 4 8 3 9 4 8
4 9 3 8 4 9 3 8 | 11 7 10 6 11 7 10 6 | 2 8 5 9 1 8 5 9 | 10 6 11 7 10 6 11 7 | 4 9 3 8 4 9 3 8 | 11 7 10 6 11 7 10 6 | 1 8 5 9 2 8 5 9 | 10 6 11 7 10 6 11 7
11 7 10 6 11 7 10 6 | 9 4 8 3 9 4 8 3 | 10 6 11 7 10 6 11 7 | 8 2 9 5 8 1 9 5 | 11 7 10 6 11 7 10 6 | 9 4 8 3 9 4 8 3 | 10 6 11 7 10 6 11 7 | 8 1 9 5 8 2 9 5
9 3 8 4 9 3 8 4 | 7 11 6 10 7 11 6 10 | 8 5 9 2 8 5 9 1 | 6 10 7 11 6 10 7 11 | 9 3 8 4 9 3 8 4 | 7 11 6 10 7 11 6 10 | 8 5 9 1 8 5 9 2 | 6 10 7 11 6 10 7 11
7 11 6 10 7 11 6 10 | 3 9 4 8 3 9 4 8 | 6 10 7 11 6 10 7 11 | 5 8 2 9 5 8 1 9 | 7 11 6 10 7 11 6 10 | 3 9 4 8 3 9 4 8 | 6 10 7 11 6 10 7 11 | 5 8 1 9 5 8 2 9
"""
STEP_TILES = torch.tensor([[[int(v) for v in row.split()] for row in line.split("|")]
                           for line in _TILES.strip().splitlines()], dtype=torch.long)  # (8 groups, 8, 8)


def channel_groups(channels: int, latent_channels: int, device=None) -> torch.Tensor:
    """Group id of each channel of a tensor holding ``channels // latent_channels`` stacked copies of y."""
    per_group = latent_channels // NUM_GROUPS
    return (torch.arange(channels, device=device) % latent_channels) // per_group


def _phase_index(channels: int, latent_channels: int, phases, device) -> torch.Tensor:
    # pixel_unshuffle(x, 2) puts x[c, 2i + a, 2j + b] at channel 4c + 2a + b.
    table = torch.tensor([2 * a + b for a, b in phases], device=device)
    return 4 * torch.arange(channels, device=device) + table[channel_groups(channels, latent_channels, device)]


def pack(x: torch.Tensor, latent_channels: int, phases) -> torch.Tensor:
    """Take, per channel group g, the sub-lattice ``x[..., 2i + p_g[0], 2j + p_g[1]]`` (half resolution)."""
    index = _phase_index(x.shape[1], latent_channels, phases, x.device)
    return F.pixel_unshuffle(x, 2).index_select(1, index)


def unpack(x: torch.Tensor, latent_channels: int, phases) -> torch.Tensor:
    """Inverse of :func:`pack`: place ``x`` on its sub-lattice of a double-resolution grid, zeros elsewhere."""
    b, c, h, w = x.shape
    index = _phase_index(c, latent_channels, phases, x.device)
    return F.pixel_shuffle(x.new_zeros(b, 4 * c, h, w).index_copy(1, index, x), 2)


def step_map(latent_channels: int, height: int, width: int, device=None) -> torch.Tensor:
    """Step number (1..11, uint8) that codes each element of a (1, M, H, W) latent."""
    if height % 8 or width % 8:
        raise ValueError(f"latent size {height}x{width} must be a multiple of 8")
    tiles = STEP_TILES.to(device)[channel_groups(latent_channels, latent_channels, device)]
    return tiles.repeat(1, height // 8, width // 8).unsqueeze(0).to(torch.uint8)


def quirk_s2_hyper_index(latent_channels: int, height: int, width: int, device=None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather index and mask reproducing the official scale-2 hyper merge (quirk B, spec §2.6).

    Per channel, the s2-grid values at the positions *not* in the assumed scale-1 phase (raster order)
    are written, in raster order, to the positions *not* in the true scale-1 phase; returns
    ``(index, mask)`` of shape (M, H*W) for ``gather`` on the flattened s2 grid.
    """
    rows = torch.arange(height, device=device).view(-1, 1) % 2
    cols = torch.arange(width, device=device).view(1, -1) % 2
    index = torch.zeros(NUM_GROUPS, height * width, dtype=torch.long, device=device)
    mask = torch.zeros(NUM_GROUPS, height * width, device=device)
    for g in range(NUM_GROUPS):
        src = ~((rows == QUIRK_S1_PHASE[g][0]) & (cols == QUIRK_S1_PHASE[g][1]))
        dst = ~((rows == S1_PHASE[g][0]) & (cols == S1_PHASE[g][1]))
        dst_flat = dst.flatten().nonzero().squeeze(1)
        index[g, dst_flat] = src.flatten().nonzero().squeeze(1)
        mask[g, dst_flat] = 1.0
    groups = channel_groups(latent_channels, latent_channels, device)
    return index[groups], mask[groups]
