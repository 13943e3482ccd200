"""Using a trained run: predictions and metrics from its weights (the infer command), the Python API
(``load_run``), and the export of its model to ONNX or TorchScript."""
