"""bmshj2018-factorized (Ballé et al. 2018) through compressai, plus smaller sizes for CPU studies and tests."""
from __future__ import annotations

from compressai.models import FactorizedPrior

from common.models.zoo import QUALITIES, ZooArchitecture

__all__ = ["ARCH", "QUALITIES", "channels", "pretrained_path", "quality_of"]

ARCH = "bmshj2018-factorized"
BMSHJ2018_FACTORIZED = ZooArchitecture(ARCH, FactorizedPrior, forward_multiple=16, eval_pad_multiple=64)
channels, quality_of, pretrained_path = (BMSHJ2018_FACTORIZED.channels, BMSHJ2018_FACTORIZED.quality_of,
                                         BMSHJ2018_FACTORIZED.pretrained_path)
# Channel counts of the tiny variant: the same layers and code paths at a fraction of the cost, for tests and
# CPU smoke runs. It has no published weights.
TINY_CHANNELS = (16, 24)
# CPU study sizes (PHASES_OVERVIEW.md): "small", half of quality 1's channels (N=128, M=192) and a quarter of its
# MACs, is the demo's model (`make pretrain` trains its base); "mini", a quarter of the channels, trains from
# scratch to convergence within the budget of the from-scratch study.
SMALL_CHANNELS = (64, 96)
MINI_CHANNELS = (32, 48)

BMSHJ2018_FACTORIZED.register()
BMSHJ2018_FACTORIZED.register_size("tiny", TINY_CHANNELS, "the same layer structure at about 1 % of quality 1's "
                                                          "MACs (tests)")
BMSHJ2018_FACTORIZED.register_size("small", SMALL_CHANNELS, "about a quarter of quality 1's MACs (the demo)")
BMSHJ2018_FACTORIZED.register_size("mini", MINI_CHANNELS, "about 1/16 of quality 1's MACs (the from-scratch study)")
