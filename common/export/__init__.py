"""Model export: ONNX graphs of bmshj2018-style models (see :mod:`common.export.onnx`)."""
