"""Fashion-MNIST data (framework-free), the seed recipe, and LeNet-5 training per framework."""

import convert  # noqa: E402,F401  (switches onnxruntime's telemetry off, see there)
