"""The shared core: errors, file I/O, the artifacts lock, bootstrap, the ONNX contract and the
canonical formats. Imports nothing else of the project; train, validate and convert build on it."""

import os

# onnxruntime 1.29+ (the Python wheel and onnxruntime-node) collects usage telemetry on Linux:
# it keeps a device id and an event database under ~/.cache/Microsoft, a `.ses` file and,
# from Node, an empty mat-debug-PID.log per process in the temporary folder, and tries to
# upload. A validation tool run in CI should leave nothing behind and send nothing, so it is
# off unless the user set ORT_DISABLE_TELEMETRY themselves. Set on import, before any
# onnxruntime starts; every child process (stages, runners, Node) inherits it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
