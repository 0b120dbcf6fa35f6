"""LeNet-5 conversion toolkit: CLI, per-stage processes, ONNX exporters and helpers."""
