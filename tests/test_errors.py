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


def test_validate_both_models_with_a_bad_data_folder(tmp_path):
    """The test images are found once for the folder: one line, not one per model."""
    for fw in FRAMEWORKS:
        (tmp_path / "a" / fw).mkdir(parents=True)
        (tmp_path / "a" / fw / "lenet5.onnx").write_bytes(b"")
    bad = tmp_path / "data.txt"
    bad.write_text("not a folder")
    _one_line(run("validate", str(tmp_path / "a"), "--data-dir", str(bad)), str(bad),
              "not a folder")


def test_convert_all_with_a_bad_data_folder(tmp_path):
    bad = tmp_path / "data"
    bad.write_text("x")
    _one_line(run("convert", "all", "--quick", "--data-dir", str(bad), "--artifacts",
                  str(tmp_path / "a")), str(bad), "not a folder")


@pytest.mark.parametrize("argv", [
    ("convert", "all", "--frameworks", "bogus"),
    ("convert", "bogus"),
    ("validate", "--latency-rounds", "0", "."),
    ("train", "torch", "--no-such-flag"),
])
def test_a_bad_flag_is_one_line_not_the_usage_text(argv):
    _one_line(run(*argv), f"python -m {argv[0]}", "--help")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_seed_neither_framework_takes(framework, tmp_path):
    _one_line(run("train", framework, "--seed", "-1", "--artifacts", str(tmp_path)), "--seed")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_unwritable_output_is_found_before_the_training(framework, tmp_path):
    (tmp_path / framework).write_text("a file where the model's folder should be")
    proc = run("train", framework, "--epochs", "1", "--limit", "64", "--artifacts",
               str(tmp_path))
    _one_line(proc, str(tmp_path / framework), "not a folder")
    assert "training LeNet-5" not in proc.stdout  # said before any training


def test_a_mistyped_data_folder_is_not_left_behind(tmp_path):
    missing = tmp_path / "no-such-folder"
    # An unreachable mirror: the download fails at once, without the network.
    proc = run("train", "torch", "--data-dir", str(missing), "--artifacts", str(tmp_path),
               env={"FASHION_MNIST_URL": "http://127.0.0.1:9/"})
    _one_line(proc, str(missing), "downloading")
    assert not missing.exists()


def test_quantize_refuses_a_model_that_breaks_the_io_contract(artifacts_copy):
    import onnx
    from onnx import TensorProto, helper

    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = artifacts_copy / "torch" / "lenet5.onnx"
    onnx.save(helper.make_model(relu), str(path))
    _one_line(run("convert", "quantize", "--frameworks", "torch", "--artifacts",
                  str(artifacts_copy)), str(path), "breaks the I/O contract")


def test_an_unavailable_runtime_named_on_the_command_line_stops_convert_all_at_once(tmp_path):
    from validate.runners import runner_class

    reason = runner_class("cuda").availability()
    if reason is None:
        pytest.skip("CUDA is available here: no runtime is known to be missing")
    proc = run("convert", "all", "--quick", "--runtimes", "cuda", "--artifacts",
               str(tmp_path / "a"))
    _one_line(proc, "runtime cuda", "unavailable")
    assert "== train" not in proc.stdout  # before any stage


def test_convert_test_fast_selects_the_fast_tier():
    proc = run("convert", "test", "--fast", "tests/test_pipeline.py", "--collect-only", "-q")
    assert proc.returncode == 0, proc.stdout[-2000:]
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert ids == ["tests/test_pipeline.py::test_bad_flags_are_exit_2"], ids


def test_convert_test_runs_only_the_tests_named():
    proc = run("convert", "test", "tests/test_errors.py", "--collect-only", "-q")
    assert proc.returncode == 0, proc.stdout[-2000:]
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert ids and all(i.startswith("tests/test_errors.py::") for i in ids)
