"""history.json, as a training run writes it: read and checked, naming the file on failure."""

from __future__ import annotations

import json
from pathlib import Path

from train.core.errors import ArtifactError


def read_history(folder: Path) -> dict:
    """Load a training run's history.json, naming the file on failure."""
    path = folder / "history.json"
    try:
        history = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; train this framework first") from None
    except ValueError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read it ({exc})") from None
    required = ("recipe", "test_accuracy", "architecture", "parameters")
    missing = [k for k in required
               if not isinstance(history, dict) or k not in history]
    if missing:
        raise ArtifactError(f"{path}: not a training history (no {', '.join(missing)})")
    wrong = [k for k, kinds in _HISTORY_TYPES.items()
             if k in history and not _is(history[k], kinds)
             or k in required and history.get(k) is None]
    epochs = history.get("epochs", [])
    if not isinstance(epochs, list) or not all(
            isinstance(e, dict) and all(_is(e.get(f, 0), (int, float)) for f in _EPOCH_FIELDS)
            for e in epochs):
        wrong.append("epochs")
    if wrong:
        raise ArtifactError(f"{path}: not a training history ({', '.join(wrong)} of the wrong "
                            "type)")
    return history


_HISTORY_TYPES = {"recipe": (dict,), "test_accuracy": (int, float), "architecture": (str,),
                  "parameters": (int,), "seconds": (int, float),
                  "images_per_second": (int, float), "versions": (dict,), "threads": (int,)}
_EPOCH_FIELDS = ("epoch", "loss", "accuracy", "seconds", "images_per_second")


def _is(value, kinds: tuple) -> bool:
    """isinstance, where a bool is not a number and null is allowed for optional fields."""
    return value is None or (isinstance(value, kinds) and not isinstance(value, bool))
