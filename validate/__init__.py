"""Framework-free validation: onnxruntime sessions, parity, accuracy, latency, reports."""

import train.core  # noqa: F401  (switches onnxruntime's telemetry off, see there)
