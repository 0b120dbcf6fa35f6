"""Bring your own model (docs/byom.md): any PyTorch nn.Module or Keras model exported to ONNX
with everything the validator needs to prove it (`python -m convert export MODEL_SPEC`)."""
