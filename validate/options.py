"""What a validation run does and how it judges: the tolerances, the options every model's
child receives, and the command-line flags both `python -m validate` and
`python -m convert all/validate` build them from."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from train.core.contract import FRAMEWORKS
from train.core.errors import ToolkitError
from validate.sandbox import Limits
from validate.timing.latency import DEFAULT_ROUNDS, QUICK_ROUNDS


@dataclass(frozen=True)
class Tolerances:
    """Pass/fail limits for parity against the native references.

    `atol` / `cuda_atol` override the runners' own documented tolerances (None keeps them)
    and, for `atol`, the conversion matrix's same-weights limit; the layer diagnosis scales with
    the tolerance its runner is judged by. `rtol` applies, with the same atol, to the stored
    outputs of test_data_set_* folders of models that are not LeNet-5 (docs/architecture.md).
    """

    atol: float | None = None         # max |probability difference|, CPU runtimes
    cuda_atol: float | None = None    # the same on CUDA (different kernels, TF32 off)
    min_agreement: float = 1.0        # top-1 agreement required (1.0 = no flips)
    rtol: float = 1e-4                # relative part, for foreign models' stored outputs

    def __post_init__(self) -> None:
        for flag, value in (("--atol", self.atol), ("--cuda-atol", self.cuda_atol),
                            ("--rtol", self.rtol)):
            if value is not None and not value >= 0:
                raise ToolkitError(f"{flag} must be >= 0, got {value:g}")
        if not 0 <= self.min_agreement <= 1:
            raise ToolkitError(f"--min-agreement must be within 0..1, got {self.min_agreement:g}")

    def for_runner(self, key: str, default: float) -> float:
        """The tolerance a runner is judged by: the flag's, else the runner's own."""
        given = self.cuda_atol if key == "cuda" else self.atol
        return default if given is None else given


@dataclass(frozen=True)
class Options:
    """What to run and how to judge it (built once by the CLI, passed to every child)."""

    tolerances: Tolerances = field(default_factory=Tolerances)
    runtimes: tuple[str, ...] = ("cpu", "cuda", "reference")
    required: tuple[str, ...] = ()    # runtimes asked for by name: unavailable is an error
    quick: bool = False               # light latency runs
    latency: bool = True              # measure latency at all
    latency_rounds: int | None = None  # None: 5, or 3 with quick
    data_dir: str | None = None
    layers: bool = False              # per-layer comparison even when parity passes
    # Why each runtime cannot run here ("" when it can): decided once, when the options are
    # made in the parent, and carried to every model's child (unpickling skips __post_init__).
    unavailable: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.unavailable is None:
            from validate.runners import availability

            object.__setattr__(self, "unavailable", availability(self.runtimes))
        for key in self.required:  # named: unavailable is an error, said once, before any work
            if self.unavailable.get(key):
                from validate.runners import runner_class

                raise ToolkitError(f"runtime {key} ({runner_class(key).name}) is unavailable "
                                   f"here: {self.unavailable[key]}")


def frameworks_arg(text: str) -> tuple[str, ...]:
    """Parse a comma-separated subset of torch,tf."""
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or any(n not in FRAMEWORKS for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of torch,tf; "
                                         f"got {text!r}")
    return names


def runtimes_arg(text: str) -> tuple[str, ...]:
    """Parse `all` or a comma-separated list of runner keys."""
    from validate.runners import runner_keys

    keys = runner_keys()
    if text.strip() == "all":
        return keys
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or any(n not in keys for n in names):
        raise argparse.ArgumentTypeError(f"expected 'all' or a comma-separated subset of "
                                         f"{','.join(keys)}; got {text!r}")
    return names


def rounds_arg(text: str) -> int:
    """--latency-rounds: a whole number, 1 to 100."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a whole number of rounds, 1 to 100; "
                                         f"got {text!r}")
    return value


def add_validate_args(p: argparse.ArgumentParser, positional: bool) -> None:
    """Validation flags (and, for the validator itself, what to validate)."""
    d, lim = Tolerances(), Limits()
    if positional:
        p.add_argument("target", nargs="?", type=Path, default=Path("artifacts"),
                       help="artifacts folder (default artifacts/), one .onnx file, or a "
                            "model export's folder (docs/byom.md)")
        p.add_argument("--frameworks", type=frameworks_arg, default=FRAMEWORKS,
                       help="comma-separated subset of torch,tf (default both)")
        p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (test images)")
        p.add_argument("--quick", action="store_true", help="short latency runs")
        p.add_argument("--output", type=Path, default=None,
                       help="folder for report.json / report.md (default: the artifacts "
                            "folder; for one .onnx file, none unless given)")
    from validate.runners import runner_keys

    p.add_argument("--runtimes", type=runtimes_arg, default=None,
                   help="'all' (default: every runtime; those that cannot run here are "
                        f"reported unavailable) or a list of {','.join(runner_keys())} (a "
                        "runtime named here must be available)")
    p.add_argument("--no-latency", dest="latency", action="store_false",
                   help="skip latency measurements")
    p.add_argument("--latency-rounds", type=rounds_arg, default=None, metavar="N",
                   help=f"rounds per latency configuration, the runtimes' rounds interleaved "
                        f"(default {DEFAULT_ROUNDS}, {QUICK_ROUNDS} with --quick; the report "
                        "gives the median and the spread)")
    p.add_argument("--layers", action="store_true",
                   help="compare every layer with the native model even when parity passes")
    p.add_argument("--atol", type=float, default=d.atol,
                   help="max |difference| wherever the same weights are compared on the CPU: "
                        "every CPU runtime's parity gate (default: each runtime's own, 1e-5 "
                        "or 2e-5), the conversion matrix (default 1e-5) and stored "
                        "test_data_set outputs; the layer diagnosis scales with it")
    p.add_argument("--cuda-atol", type=float, default=d.cuda_atol,
                   help="the same for the CUDA runtime (default 1e-4)")
    p.add_argument("--rtol", type=float, default=d.rtol,
                   help=f"relative part (atol + rtol x |stored|) for the stored outputs of a "
                        f"model that is not LeNet-5 (default {d.rtol:g})")
    p.add_argument("--min-agreement", type=float, default=d.min_agreement,
                   help=f"top-1 agreement required, 0..1 (default {d.min_agreement:g})")
    p.add_argument("--max-memory", type=int, default=lim.memory_mb, metavar="MIB",
                   help=f"memory limit per model, MiB (default {lim.memory_mb})")
    p.add_argument("--timeout", type=float, default=lim.timeout_s, metavar="SECONDS",
                   help=f"time limit per model (default {lim.timeout_s:g})")
    p.add_argument("--summary", type=Path, default=None, metavar="PATH",
                   help="append the short Markdown verdict to PATH (e.g. $GITHUB_STEP_SUMMARY)")


def tolerances(args: argparse.Namespace) -> Tolerances:
    """Tolerances from parsed flags."""
    return Tolerances(atol=args.atol, cuda_atol=args.cuda_atol, min_agreement=args.min_agreement,
                      rtol=args.rtol)


def options(args: argparse.Namespace, quick: bool, data_dir: str | None) -> Options:
    """Validation options from parsed flags (a runtime named in --runtimes and unavailable
    here is one line, before any work)."""
    from validate.runners import runner_keys

    return Options(tolerances=tolerances(args), runtimes=args.runtimes or runner_keys(),
                   required=args.runtimes or (), quick=quick, latency=args.latency,
                   latency_rounds=args.latency_rounds, data_dir=data_dir, layers=args.layers)


def limits(args: argparse.Namespace) -> Limits:
    """Containment limits from parsed flags."""
    return Limits(memory_mb=args.max_memory, timeout_s=args.timeout)
