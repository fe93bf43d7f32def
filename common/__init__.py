"""Shared library of the LIC toolkit: data, models, losses, training, evaluation, export."""
