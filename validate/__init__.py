"""Framework-free validation: onnxruntime sessions, parity, accuracy, latency, reports."""

import convert  # noqa: E402,F401  (switches onnxruntime's telemetry off, see there)
