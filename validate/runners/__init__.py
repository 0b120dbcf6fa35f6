"""Runners: one contract (validate.runners.base.Runner) for every place a model runs.

`RUNNERS` maps each `--runtimes` key to its class, in report order. The JavaScript runners
(onnxruntime-node, onnxruntime-web under Node, and a headless browser) run in processes of
their own; the others run in this one.
"""

from __future__ import annotations

import importlib

from validate.runners.base import Runner, RunnerFailed, RunnerUnavailable
from validate.runners.ort import (CPU, CUDA, CpuRunner, CudaRunner, OnnxRunner,
                                  ProviderStatus, ProviderUnavailable, cuda_status,
                                  session_options)

# key -> "module:Class"; imported on first use so that a missing optional part (Playwright)
# makes only its own runner unavailable.
_SPECS = {
    "cpu": "validate.runners.ort:CpuRunner",
    "cuda": "validate.runners.ort:CudaRunner",
    "reference": "validate.runners.reference:ReferenceRunner",
    "openvino": "validate.runners.openvino_cpu:OpenVinoRunner",
    "tract": "validate.runners.tract_cpu:TractRunner",
    "node": "validate.runners.node:NodeRunner",
    "wasm": "validate.runners.node:WasmRunner",
    "browser": "validate.runners.browser:BrowserRunner",
}


def runner_keys() -> tuple[str, ...]:
    """Every runner's `--runtimes` key, in report order."""
    return tuple(_SPECS)


def runner_class(key: str) -> type[Runner]:
    """The class registered under `key`."""
    module, _, cls = _SPECS[key].partition(":")
    return getattr(importlib.import_module(module), cls)


def availability(keys: tuple[str, ...]) -> dict[str, str]:
    """Why each runner cannot run here, "" for those that can (validate.options.Options asks
    once per validation and hands the answer to every model's child and to the report)."""
    return {key: runner_class(key).availability() or "" for key in keys}


__all__ = ["CPU", "CUDA", "CpuRunner", "CudaRunner", "OnnxRunner", "ProviderStatus",
           "ProviderUnavailable", "Runner", "RunnerFailed", "RunnerUnavailable", "cuda_status",
           "availability", "runner_class", "runner_keys", "session_options"]
