"""OpenVINO in this process: the CPU plugin, reading the ONNX file with OpenVINO's own ONNX
frontend (no conversion step, no onnx package in between).

An engine independent of onnxruntime: its own ONNX importer and its own kernels (oneDNN and
the CPU plugin's JIT). The compile settings pin what would otherwise vary between machines
and runs: inference precision f32 and execution mode ACCURACY (on CPUs with AVX-512 BF16 or
AMX the plugin would otherwise run f32 models in bf16), one stream, the runner's thread count,
denormals kept (not flushed to zero). The precision and thread count the compiled model
reports are checked, never assumed. A dynamic batch stays dynamic: one compiled model serves
every batch size.

The CPU plugin computes float64 tensors in float32 and int64 tensors in int32, whatever the
settings (it inserts the conversions itself). Outputs are returned as it computes them, in the
graph's types, so that the comparison shows what a deployment on it would get: int64 values
outside the int32 range come back wrong, float64 ones rounded to float32.
"""

from __future__ import annotations

import functools
import io
import re
from importlib import metadata
from pathlib import Path

import numpy as np

from validate.runners.base import Runner, RunnerFailed, RunnerUnavailable, tidy

PACKAGE = "openvino"
DEVICE = "CPU"


def installed_version() -> str:
    """The installed openvino wheel's version ("" when it is not installed)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return ""


# OpenVINO prefixes every message with the C++ source locations it passed through.
_NOISE = re.compile(r"^(Exception from \S+:\d+:|Check '.*' failed at \S+:\d+:|"
                    r"FrontEnd API failed with \w+:|To facilitate the conversion .*)\s*")


def one_line(exc: BaseException, limit: int = 240) -> str:
    """An OpenVINO exception as one line: its message without source locations."""
    lines = []
    for line in str(exc).splitlines():
        line = line.strip()
        while line and (m := _NOISE.match(line)):
            line = line[m.end():]
        if line:
            lines.append(line.removeprefix("-- "))
    return tidy(" ".join(lines), limit) if lines else type(exc).__name__


@functools.lru_cache(maxsize=1)
def _problem() -> str | None:
    try:
        import openvino as ov
    except Exception as exc:  # not installed, or its shared libraries do not load here
        return (f"the openvino package cannot be imported ({type(exc).__name__}: "
                f"{tidy(str(exc), 160)}); `pip install -e .` installs the pinned version")
    try:
        devices = ov.Core().available_devices
    except Exception as exc:
        return f"OpenVINO {ov.__version__} cannot start ({one_line(exc, 160)})"
    if DEVICE not in devices:
        return f"OpenVINO offers no {DEVICE} device here (devices: {', '.join(devices) or 'none'})"
    return None


class OpenVinoRunner(Runner):
    """OpenVINO, CPU plugin, f32, threads pinned."""

    key = "openvino"
    name = "openvino-cpu"
    narrows_wide_types = True  # see the module docstring
    provider = "cpu"
    # Measured on all 10,000 test images, quick models, at batch 1, 7, 32, 256, 1000 and
    # 10,000, 1 and 2 threads (2-core AMD EPYC, AVX2): max |Δp| vs the native framework
    # 1.1e-6 (torch) and 1.9e-6 (tf); vs the float64 reference 1.2e-6 and 1.4e-6, where the
    # native models are at 7.0e-7 and 9.8e-7 and onnxruntime at 8.4e-7 and 1.2e-6 (the noise
    # floor). Batch 1 vs 256 differs by up to 1.4e-6 (tf); reruns are bit-identical.
    # 2e-5: 10x the worst measured, 14-17x the floor.
    tolerance = 2e-5
    description = (f"OpenVINO {installed_version() or '(not installed)'} (Python), CPU "
                   "plugin, ONNX frontend, f32 inference precision, ACCURACY mode")
    default_batch = 1000  # whole-test-set runs in chunks, as onnxruntime

    def __init__(self, model: Path | bytes, threads: int = 1) -> None:
        super().__init__(model, threads)
        self.compiled = None
        self.request = None

    @classmethod
    def availability(cls) -> str | None:
        return _problem()

    def config(self) -> dict:
        """compile_model's settings: f32, one stream, the runner's threads, no denormal flush."""
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        return {hints.inference_precision: ov.Type.f32,
                hints.execution_mode: hints.ExecutionMode.ACCURACY,
                hints.performance_mode: hints.PerformanceMode.LATENCY,
                props.num_streams: 1,
                props.inference_num_threads: self.threads,
                props.intel_cpu.denormals_optimization: False}

    def load(self) -> None:
        reason = _problem()
        if reason:
            raise RunnerUnavailable(reason)
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints
        from openvino.frontend import FrontEndManager

        # The ONNX frontend by name: Core.read_model would also try the TensorFlow and Paddle
        # readers on a file the ONNX one rejects (and TensorFlow's prints to stderr).
        frontend = FrontEndManager().load_by_framework("onnx")
        source = io.BytesIO(self.model) if isinstance(self.model, bytes) else str(self.model)
        try:
            model = frontend.convert(frontend.load(source))
            self.compiled = ov.Core().compile_model(model, DEVICE, self.config())
        except Exception as exc:
            raise RunnerFailed(f"OpenVINO cannot load it ({one_line(exc)})", str(exc)) from None
        precision = self.compiled.get_property(hints.inference_precision)
        threads = self.compiled.get_property(props.inference_num_threads)
        if precision != ov.Type.f32 or threads != self.threads:
            raise RunnerUnavailable(f"OpenVINO's CPU plugin compiled it with precision "
                                    f"{precision} and {threads} threads, not f32 and "
                                    f"{self.threads}")
        self.input_names = [i.get_any_name() for i in model.inputs]
        self.output_names = [o.get_any_name() for o in model.outputs]
        self.request = self.compiled.create_infer_request()

    def close(self) -> None:
        self.request = self.compiled = None

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None
             ) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        try:
            wanted = [self.output_names.index(n) for n in names]
            inputs = {i: np.ascontiguousarray(feeds[n]) for i, n in enumerate(self.input_names)}
            result = self.request.infer(inputs, share_inputs=False, share_outputs=False)
            values = result.to_tuple()
        except Exception as exc:
            raise RunnerFailed(f"OpenVINO failed to run it ({one_line(exc)})", str(exc)) from None
        return {n: values[i] for n, i in zip(names, wanted)}
