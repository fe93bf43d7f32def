"""The training engine (``python -m common.train``)."""
