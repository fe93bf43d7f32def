"""Shared library of the LIC toolkit: data, models, losses, training, evaluation, export."""
import warnings

# compressai 1.2.8 calls torch.jit.script at import time; torch 2.14 warns about it on every import.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
