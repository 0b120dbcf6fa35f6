"""Every command's bad-input error is exactly one line on stderr, raw (no framework start-up
chatter filtered out), with exit status 2, for both frameworks."""

from __future__ import annotations

import pytest

from tests.conftest import run

FRAMEWORKS = ["torch", "tf"]


def _one_line(proc, *fragments: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_train_with_a_data_folder_that_is_a_file(framework, tmp_path):
    bad = tmp_path / "data"
    bad.write_text("x")
    _one_line(run("train", framework, "--data-dir", str(bad), "--artifacts", str(tmp_path)),
              str(bad), "not a folder")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_convert_train_with_bad_flags(framework, tmp_path):
    _one_line(run("convert", "train", framework, "--threads", "0", "--artifacts", str(tmp_path)),
              "--threads")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_export_without_a_trained_model(framework, tmp_path):
    _one_line(run("convert", "export", framework, "--artifacts", str(tmp_path)),
              str(tmp_path / framework), "missing")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_twins_without_an_export(framework, tmp_path):
    _one_line(run("convert", "twins", framework, "--artifacts", str(tmp_path)),
              str(tmp_path), "no exported model")


def test_quantize_without_an_export(tmp_path):
    _one_line(run("convert", "quantize", "--artifacts", str(tmp_path)), str(tmp_path), "missing")


def test_validate_an_empty_folder(tmp_path):
    _one_line(run("validate", str(tmp_path)), str(tmp_path), "no exported model")


def test_validate_a_missing_file(tmp_path):
    _one_line(run("validate", str(tmp_path / "model.onnx")), str(tmp_path / "model.onnx"),
              "no such file")


def test_convert_all_with_a_bad_data_folder(tmp_path):
    bad = tmp_path / "data"
    bad.write_text("x")
    _one_line(run("convert", "all", "--quick", "--data-dir", str(bad), "--artifacts",
                  str(tmp_path / "a")), str(bad), "not a folder")
