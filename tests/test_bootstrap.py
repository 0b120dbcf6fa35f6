"""The first-run set-up (train.core.bootstrap): what it decides to make again."""

from __future__ import annotations

import sys
import venv
from pathlib import Path

from train.core import bootstrap


def test_a_venv_left_without_pip_is_made_again(tmp_path, monkeypatch):
    """A first run stopped while `venv` was still installing pip leaves bin/python and no pip:
    the next run creates the environment again instead of failing on `No module named pip`."""
    half = tmp_path / ".venv"
    venv.create(half, with_pip=False, symlinks=True)
    monkeypatch.setattr(bootstrap, "VENV", half)
    monkeypatch.setattr(bootstrap, "STAMP", half / ".lenet5-installed")
    assert (half / "bin" / "python").is_file()
    assert not bootstrap._has_pip(half / "bin" / "python")
    assert bootstrap._venv_to_create()
    # Installed (the stamp matches): kept as it is, whatever it holds.
    (half / ".lenet5-installed").write_text(bootstrap._wanted() + "\n")
    assert not bootstrap._venv_to_create()
    # No environment at all: created.
    monkeypatch.setattr(bootstrap, "VENV", tmp_path / "none")
    assert bootstrap._venv_to_create()


def test_an_interpreter_with_pip_is_kept():
    assert bootstrap._has_pip(Path(sys.executable))
