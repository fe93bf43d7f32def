"""common.receipt's measurements, against values worked out by hand."""
from __future__ import annotations

import math

import torch
from compressai.entropy_models import EntropyBottleneck
from torch import nn

from common import receipt


class OneBottleneck(nn.Module):
    def __init__(self):
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(2)
        with torch.no_grad():  # channel 0 holds [-1, 1], channel 1 [-10, 10]
            self.entropy_bottleneck.quantiles.copy_(torch.tensor([[[-1.0, 0.0, 1.0]], [[-10.0, 0.0, 10.0]]]))

    def forward(self, x):
        return self.entropy_bottleneck(x)


def test_outside_quantiles_counts_the_values_beyond_half_a_step_past_them():
    # Channel 0: 1.4 and -1.4 round into the table ([-1, 1] widened by half a step), 1.6 and -2 do not;
    # channel 1: all four inside. 2 of 8 values outside.
    x = torch.tensor([[[[0.0, 1.4], [1.6, -2.0]], [[9.0, -10.4], [0.0, 3.0]]]])
    assert receipt.outside_quantiles(OneBottleneck(), [("a", x)]) == {"entropy_bottleneck": 25.0}
    # Over two images the shares pool their values: 2 + 0 of 16.
    assert receipt.outside_quantiles(OneBottleneck(), [("a", x), ("b", torch.zeros_like(x))]) == {
        "entropy_bottleneck": 12.5}


def row(bpp, estimate, height=100, width=100):
    return {"image": "i.png", "bpp": bpp, "bpp_estimated": estimate, "height": height, "width": width}


def test_bpp_gaps_and_which_of_them_the_coder_cannot_explain():
    gaps = receipt.bpp_gaps([row(1.05, 1.0), row(0.5, 0.6), row(1.0, 0.0)])
    first, second, degenerate = gaps["images"]
    assert math.isclose(first["gap_%"], 5.0) and math.isclose(first["bytes_over_estimate"], 62.5)
    assert math.isclose(second["gap_%"], -100 / 6) and math.isclose(second["bytes_over_estimate"], -125.0)
    assert math.isnan(degenerate["gap_%"]) and math.isclose(gaps["largest_gap_%"], 100 / 6)
    assert receipt.suspect_gaps(gaps) == [first, second]
    # 5 % of a 20x20 image is 2.5 bytes: within the coder's fixed cost, not suspect.
    assert receipt.suspect_gaps(receipt.bpp_gaps([row(1.05, 1.0, 20, 20)])) == []
