"""mbt2018-mean (Minnen et al. 2018, the mean-scale hyperprior) through compressai: the base model of the
Balanced R-D paper's experiments, in our registry at the zoo's qualities."""
from __future__ import annotations

from compressai.models import MeanScaleHyperprior

from common.models.zoo import ZooArchitecture

# g_a and h_a halve H and W six times in all: forward needs multiples of 64, as evaluation pads to.
MBT2018_MEAN = ZooArchitecture("mbt2018-mean", MeanScaleHyperprior, forward_multiple=64, eval_pad_multiple=64)
MBT2018_MEAN.register()
