"""LeNet-5 conversion toolkit: the CLI and pipeline, the exporters, the twins, quantization."""

import train.core  # noqa: F401  (switches onnxruntime's telemetry off, see there)
