"""Bring your own model, the validator side (docs/byom.md): a model export validated as LeNet-5 is."""
