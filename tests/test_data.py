"""train.data: the real files, the IDX checks, downloading, and the CLI's one-line errors."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from train.core.errors import DataError
from tests.conftest import error_lines, python, run
from train import data


@pytest.fixture(scope="module")
def ds(data_dir):
    return data.load(data_dir)


def test_real_files_match_the_published_facts(ds):
    assert ds.train_images.shape == (60000, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 28, 28)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert ds.test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert ds.train_images.mean() == pytest.approx(72.94, abs=0.01)
    assert ds.train_images.std() == pytest.approx(90.02, abs=0.01)
    x = data.to_float(ds.test_images[:5])
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def _idx(magic: int, dims: list[int], payload: bytes) -> bytes:
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return head + payload


def test_parse_idx_checks_magic_and_size():
    good = _idx(0x803, [2, 28, 28], bytes(2 * 784))
    assert data.parse_idx(good, "f", 0x803).shape == (2, 28, 28)
    with pytest.raises(DataError, match="f: bad IDX magic number 0x00000801"):
        data.parse_idx(_idx(0x801, [2], bytes(2)), "f", 0x803)
    with pytest.raises(DataError, match=r"f: IDX dimensions \[3, 28, 28\] need"):
        data.parse_idx(_idx(0x803, [3, 28, 28], bytes(2 * 784)), "f", 0x803)
    with pytest.raises(DataError, match="too short"):
        data.parse_idx(b"\0\0", "f", 0x801)


def _write_split(folder: Path, images: bytes, labels: bytes) -> None:
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(images)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(labels)


def test_load_split_checks_labels_and_counts(tmp_path):
    _write_split(tmp_path, _idx(0x803, [2, 28, 28], bytes(2 * 784)), _idx(0x801, [2], bytes([1, 12])))
    with pytest.raises(DataError, match="label 12 outside 0-9"):
        data.load_split(tmp_path, "test")
    _write_split(tmp_path, _idx(0x803, [2, 28, 28], bytes(2 * 784)), _idx(0x801, [3], bytes(3)))
    with pytest.raises(DataError, match="3 labels for 2 images"):
        data.load_split(tmp_path, "test")


@pytest.fixture
def data_copy(data_dir, tmp_path) -> Path:
    folder = tmp_path / "fm"
    shutil.copytree(data_dir, folder, ignore=shutil.ignore_patterns("README*", "SHA256SUMS"))
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def _one_line_exit_2(proc, name: str) -> str:
    lines = error_lines(proc)
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert name in lines[0]
    return lines[0]


def test_corrupted_file_is_one_line_exit_2_and_removed(data_copy):
    path = data_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    proc = run("train", "torch", "--epochs", "1", "--limit", "10", "--data-dir", str(data_copy),
               "--artifacts", str(data_copy / "a"))
    line = _one_line_exit_2(proc, str(path))
    assert "sha256 mismatch" in line
    assert not path.exists()  # no bad file kept
    assert not (data_copy / "a").exists()


def test_truncated_file_is_one_line_exit_2(data_copy):
    path = data_copy / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100000])
    proc = run("convert", "all", "--data-dir", str(data_copy), "--artifacts", str(data_copy / "a"))
    assert "sha256 mismatch" in _one_line_exit_2(proc, str(path))
    assert not path.exists()


def test_missing_file_that_cannot_be_fetched_is_one_line_exit_2(data_copy):
    (data_copy / "train-labels-idx1-ubyte.gz").unlink()
    # A closed port on loopback: the download fails at once, and no outside host is contacted.
    proc = run("convert", "all", "--data-dir", str(data_copy), "--artifacts", str(data_copy / "a"),
               env={"FASHION_MNIST_URL": "http://127.0.0.1:9/"})
    line = _one_line_exit_2(proc, str(data_copy / "train-labels-idx1-ubyte.gz"))
    assert "missing, and downloading http://127.0.0.1:9/train-labels-idx1-ubyte.gz failed" in line
    assert sorted(p.name for p in data_copy.iterdir() if p.name.startswith(".")) == []


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server over a folder of its own."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_download_fills_a_given_folder_and_verifies(server, data_dir, tmp_path, monkeypatch):
    root, url = server
    for name in data.FILES:
        if name != "train-images-idx3-ubyte.gz":  # not served: a fetch of it would fail
            shutil.copy(data_dir / name, root / name)
    target = tmp_path / "target"
    target.mkdir()
    shutil.copy(data_dir / "train-images-idx3-ubyte.gz", target)  # present: not fetched again
    monkeypatch.setenv(data.ENV_URL, url)
    assert data.ensure_files(target) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(data.FILES)


def test_download_of_a_bad_file_keeps_nothing(server, data_dir, tmp_path, monkeypatch):
    root, url = server
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the file")
    monkeypatch.setenv(data.ENV_URL, url)
    target = tmp_path / "target"
    with pytest.raises(DataError, match="sha256 is .* nothing was kept"):
        data.download("t10k-labels-idx1-ubyte.gz", target)
    assert list(target.iterdir()) == []


def test_env_var_folder_is_used_alone(data_copy, monkeypatch):
    monkeypatch.setenv(data.ENV_DIR, str(data_copy))
    assert data.ensure_files() == data_copy
    # A file missing there is fetched into it, never taken from the cache or a local copy.
    (data_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv(data.ENV_URL, "http://127.0.0.1:9/")
    with pytest.raises(DataError, match=f"{data_copy}/t10k-labels-idx1-ubyte.gz: missing"):
        data.ensure_files()


def test_report_images_from_disk_keep_another_tools_bad_copy(data_copy, tmp_path, monkeypatch):
    """load_test_on_disk (report.html's flipped images) takes a local copy only when it is the
    official file, like ensure_files, and never removes a file in another tool's folder."""
    keras = tmp_path / "keras-home"
    bad = keras / "datasets" / "fashion-mnist"
    shutil.copytree(data_copy, bad)
    damaged = bad / "t10k-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    monkeypatch.delenv(data.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("KERAS_HOME", str(keras))
    assert data._local_copies()[0] == bad
    monkeypatch.setattr(data, "_local_copies", lambda: [bad, data_copy])
    images, labels = data.load_test_on_disk()
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    assert damaged.is_file()  # still there: not ours to remove
    monkeypatch.setattr(data, "_local_copies", lambda: [bad])
    with pytest.raises(DataError, match="no Fashion-MNIST test files"):
        data.load_test_on_disk()
    assert damaged.is_file()


def test_a_malformed_mirror_url_is_a_data_error(data_copy, monkeypatch):
    (data_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv(data.ENV_URL, "mirror.local/fashion")
    with pytest.raises(DataError, match="unknown url type"):
        data.ensure_files(data_copy)


def _digest_snippet(arrays: str) -> str:
    return ("import hashlib, numpy as np\n" + arrays +
            "\nprint(hashlib.sha256(b''.join(np.ascontiguousarray(a, dtype=np.uint8).tobytes()"
            " for a in arrays)).hexdigest())")


@pytest.mark.slow  # both frameworks' own dataset readers
def test_torchvision_and_keras_readers_yield_the_same_arrays(ds, data_dir, tmp_path):
    import hashlib

    ours = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (
        ds.train_images, ds.train_labels, ds.test_images, ds.test_labels))).hexdigest()
    for sub in ("FashionMNIST/raw", "datasets/fashion-mnist"):
        (tmp_path / sub).mkdir(parents=True)
        for name in data.FILES:
            (tmp_path / sub / name).symlink_to((data_dir / name).resolve())
    tv = python(_digest_snippet(
        "import torchvision\n"
        f"tr = torchvision.datasets.FashionMNIST({str(tmp_path)!r}, train=True, download=True)\n"
        f"te = torchvision.datasets.FashionMNIST({str(tmp_path)!r}, train=False, download=True)\n"
        "arrays = [tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy()]"))
    assert tv.returncode == 0, tv.stderr[-2000:]
    ks = python(_digest_snippet(
        "import keras\n(a, b), (c, d) = keras.datasets.fashion_mnist.load_data()\n"
        "arrays = [a, b, c, d]"), env={"KERAS_HOME": str(tmp_path)})
    assert ks.returncode == 0, ks.stderr[-2000:]
    assert tv.stdout.split()[-1] == ours
    assert ks.stdout.split()[-1] == ours
