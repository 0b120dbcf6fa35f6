"""Framework-free validation: onnxruntime sessions, parity, accuracy, latency, reports."""
