"""The user's factory: imported by name, its framework told before it runs (to seed that
framework first), called, and what it returns recognised as a torch or Keras model.

One framework per process: the framework is guessed from the factory's module and source
before anything is imported where that can be done, so that TensorFlow is imported quietly
(train.quiet) and torch is never imported beside it by this module.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import random
import re
import sys
from typing import Any, Callable

import numpy as np

from train.core.errors import ToolkitError
from train.core.spec import ModelSpec

_TORCH = re.compile(r"^\s*(?:import|from)\s+(torch|torchvision)\b|\btorch\.nn\b", re.M)
_TF = re.compile(r"^\s*(?:import|from)\s+(keras|tensorflow|tf_keras)\b|\bkeras\.", re.M)
_PACKAGES = {"torch": "torch", "torchvision": "torch", "timm": "torch", "keras": "tf",
             "tensorflow": "tf", "tf_keras": "tf"}


def _by_source(text: str) -> str | None:
    torch, tf = bool(_TORCH.search(text)), bool(_TF.search(text))
    return "torch" if torch and not tf else "tf" if tf and not torch else None


def _module_hint(module_name: str) -> str | None:
    """The framework a factory's module belongs to, from its package or its source file,
    without importing it (None: cannot tell)."""
    top = module_name.split(".")[0]
    if top in _PACKAGES:
        return _PACKAGES[top]
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        return None
    try:
        with open(found.origin, encoding="utf-8") as handle:
            return _by_source(handle.read())
    except OSError:
        return None


def _import(module_name: str, origin: str) -> Any:
    """The factory's module, or one line saying why it cannot be imported."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise ToolkitError(f"{origin}: no module named {missing!r} (the factory's "
                               "module must be importable from the current folder)") from None
        raise ToolkitError(f"{origin}: importing {module_name} failed: it needs {missing!r}, "
                           "which is not installed") from None
    except Exception as exc:  # the user's module raised while importing: their code
        raise ToolkitError(f"{origin}: importing {module_name} failed: "
                           f"{type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def resolve(spec: ModelSpec) -> tuple[Callable, str | None]:
    """The factory callable and the framework guessed for it (None: cannot tell before it
    runs). TensorFlow is imported quietly first when the factory is a Keras one."""
    module_name, attr = spec.factory.split(":", 1)
    hint = _module_hint(module_name)
    if hint == "tf":
        from train.quiet import import_tensorflow

        import_tensorflow()
    target = _import(module_name, spec.origin)
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ToolkitError(f"{spec.origin}: module {module_name} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ToolkitError(f"{spec.origin}: {spec.factory} is not callable")
    if hint is None:
        try:
            hint = _by_source(inspect.getsource(target))
        except (OSError, TypeError):
            hint = None
    return target, hint


def framework_of(obj: Any) -> str | None:
    """torch for an nn.Module, tf for a Keras model, else None (read from the class's
    modules, so that asking imports no framework)."""
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        if module.startswith("torch.") and cls.__name__ == "Module":
            return "torch"
        if module.startswith(("keras", "tf_keras", "tensorflow")) and cls.__name__ in (
                "Model", "Functional", "Sequential"):
            return "tf"
    return None


def seed_framework(framework: str | None, seed: int, threads: int | None = None) -> None:
    """Seed Python, numpy and the framework (before the factory draws its weights); pin
    its intra-op threads (inter-op 1) when asked, before it runs an op."""
    random.seed(seed)
    np.random.seed(seed)
    if framework == "torch":
        import torch

        torch.manual_seed(seed)
        if threads:
            torch.set_num_threads(threads)
    elif framework == "tf":
        from train.quiet import import_tensorflow

        tf = import_tensorflow()
        import keras

        keras.utils.set_random_seed(seed)
        if threads:
            with contextlib.suppress(RuntimeError):  # already initialised: keeps its pools
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)


def _call(fn: Callable, spec: ModelSpec) -> Any:
    try:
        return fn(**spec.kwargs)
    except ToolkitError:
        raise
    except Exception as exc:  # a bad keyword, the user's code failing: one line
        raise ToolkitError(f"{spec.origin}: {spec.factory}(**{spec.kwargs!r}) failed: "
                           f"{type(exc).__name__}: {_first_line(exc)}") from None


def build(spec: ModelSpec, threads: int | None = None) -> tuple[str, Any]:
    """(framework, native model): the factory called with its kwargs after seeding. Where
    the framework cannot be told before the call, it is called once to learn it, then again
    after seeding (same weights whoever calls it)."""
    fn, hint = resolve(spec)
    if hint is None:
        hint = framework_of(_call(fn, spec))
    seed_framework(hint, spec.seed, threads)
    model = _call(fn, spec)
    framework = framework_of(model)
    if framework is None:
        raise ToolkitError(f"{spec.origin}: {spec.factory} returned a "
                           f"{type(model).__module__}.{type(model).__qualname__}, neither a "
                           "torch.nn.Module nor a keras.Model")
    if framework != hint:  # guessed wrong: seed the right one and build again
        seed_framework(framework, spec.seed, threads)
        model = _call(fn, spec)
    if framework == "tf" and "torch" in sys.modules:
        raise ToolkitError(f"{spec.origin}: {spec.factory} imported torch and returned a Keras "
                           "model; one framework per process (importing both crashes)")
    return framework, model


def fit_report(own: dict[str, tuple], saved: dict[str, tuple]) -> str | None:
    """None if the checkpoint's shapes `saved` fit the model's `own` exactly (by key), else
    one phrase naming the missing, unexpected and shape-mismatched keys (four of each)."""
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [f"{k} {list(saved[k])} vs {list(own[k])}" for k in own
              if k in saved and tuple(saved[k]) != tuple(own[k])]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected),
                        ("shape mismatch (checkpoint vs model)", shapes)):
        if keys:
            more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
            parts.append(f"{label}: {', '.join(keys[:4])}{more}")
    return "; ".join(parts) or None
