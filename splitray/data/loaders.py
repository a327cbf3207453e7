"""Load datasets by name into memory: synthetic, CIFAR-10/100, STL-10 and ImageFolder."""

from __future__ import annotations

import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import ArrayDataset
from .synthetic import make_synthetic

DATASET_NAMES = ("synthetic", "cifar10", "cifar100", "stl10", "imagefolder")
SPLITS = ("train", "test", "val")
DATA_ENV_VAR = "SPLITRAY_DATA"
SYNTHETIC_DEFAULT_SAMPLES = {"train": 2048, "test": 512}
SYNTHETIC_DEFAULT_IMAGE_SIZE = 32
IMAGEFOLDER_DEFAULT_IMAGE_SIZE = 64
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
STL10_IMAGE_SIZE = 96
_RESIZE_CHUNK = 2048


class DataFileError(ValueError):
    """A dataset file exists but cannot be read (truncated, corrupt, another format)."""


class DownloadError(OSError):
    """Fetching a dataset failed (no network, a refused connection, a bad archive)."""


class SampleCountError(ValueError):
    """More samples asked for than the dataset split has; `available` says how many it has."""

    def __init__(self, message: str, available: int) -> None:
        super().__init__(message)
        self.available = available


def resolve_data_root(root: str | os.PathLike | None) -> Path | None:
    """The data root: `root` if given, else $SPLITRAY_DATA if set, else None."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env).expanduser() if env else None


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    num_samples: int | None = None,
    image_size: int | None = None,
    num_classes: int = 10,
    channels: int = 3,
    seed: int = 0,
) -> ArrayDataset:
    """Load split `split` ("train", or "test" / its alias "val") of dataset `name` into memory.

    `num_samples` keeps a random subset drawn by `seed` (the whole split if None); `image_size`
    resizes to image_size x image_size. `num_classes` and `channels` shape the synthetic dataset
    only (whose samples and prototypes are drawn from `seed`); real datasets carry their own.
    Real datasets are looked up under `root`, else $SPLITRAY_DATA; see `find_data_dir` for layouts.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; allowed: {DATASET_NAMES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {SPLITS} ('val' = 'test')")
    if num_samples is not None and (
        isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1
    ):
        raise ValueError(f"num_samples must be an integer >= 1 or None, got {num_samples!r}")
    if image_size is not None and (
        isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1
    ):
        raise ValueError(f"image_size must be an integer >= 1 or None, got {image_size!r}")
    train = split == "train"

    if name == "synthetic":
        return make_synthetic(
            num_samples or SYNTHETIC_DEFAULT_SAMPLES["train" if train else "test"],
            train=train,
            image_size=image_size or SYNTHETIC_DEFAULT_IMAGE_SIZE,
            channels=channels,
            num_classes=num_classes,
            seed=seed,
        )
    base = resolve_data_root(root)
    if name == "imagefolder":
        if download:
            raise ValueError("download=True is not supported for imagefolder; use download=False")
        return _load_imagefolder(base, split, image_size, num_samples, seed)
    if name in ("cifar10", "cifar100"):
        images, labels, classes = _load_cifar(name, base, train, download)
    else:
        images, labels, classes = _load_stl10(base, train, download)
    keep = _subsample(len(labels), num_samples, seed, name)
    if keep is not None:
        images, labels = images[keep], labels[keep]
    data = torch.from_numpy(np.ascontiguousarray(images))
    if image_size is not None and image_size != data.shape[-1]:
        data = _resize(data, image_size)
    return ArrayDataset(data, torch.from_numpy(labels.astype(np.int64)), classes)


# --- locating files

_LAYOUTS = {
    # name: (folder the files live in, a file that proves the folder holds them)
    "cifar10": ("cifar-10-batches-py", "test_batch"),
    "cifar100": ("cifar-100-python", "test"),
    "stl10": ("stl10_binary", "test_X.bin"),
}


def _candidates(name: str, base: Path) -> list[Path]:
    folder = _LAYOUTS[name][0]
    return [base / folder, base / name / folder, base]


def find_data_dir(name: str, base: Path | None) -> Path | None:
    """The folder holding `name`'s files: base/<folder>, base/<name>/<folder> or base itself."""
    if base is None:
        return None
    marker = _LAYOUTS[name][1]
    for candidate in _candidates(name, base):
        if (candidate / marker).is_file():
            return candidate
    return None


def _locate(name: str, base: Path | None, download: bool, fetch) -> Path:
    """Find `name`'s folder; download it with torchvision's `fetch(root)` when allowed."""
    found = find_data_dir(name, base)
    if found is not None:
        return found
    if download and base is not None:
        try:
            fetch(str(base))
        # urllib's URLError and HTTPError are OSErrors; torchvision raises RuntimeError on a
        # checksum mismatch, tarfile its own errors on a broken archive
        except (OSError, RuntimeError, tarfile.TarError, EOFError) as e:
            raise DownloadError(f"downloading {name} into {base} failed: {e}") from None
        found = find_data_dir(name, base)
        if found is not None:
            return found
        raise FileNotFoundError(f"{name}: download into {base} did not produce the expected files")
    if base is None:
        where = f"no data root given (root=None and ${DATA_ENV_VAR} is unset)"
    else:
        where = "searched " + ", ".join(str(p) for p in _candidates(name, base))
    raise FileNotFoundError(
        f"{name} not found: {where}. Point data.root (or ${DATA_ENV_VAR}) at the folder holding "
        f"{_LAYOUTS[name][0]}/, or set data.download=true (with data.root) to download it there."
    )


# --- CIFAR


def _load_cifar(
    name: str, base: Path | None, train: bool, download: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Read the python-pickle layout directly (no checksum check, unlike torchvision)."""

    def fetch(target: str) -> None:
        import torchvision

        dataset_cls = (
            torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        )
        dataset_cls(target, train=train, download=True)

    folder = _locate(name, base, download, fetch)
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        label_key, classes = "labels", 10
    else:
        files = ["train" if train else "test"]
        label_key, classes = "fine_labels", 100
    images, labels = [], []
    for file in files:
        path = folder / file
        if not path.is_file():
            raise FileNotFoundError(f"{name}: missing file {path}")
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
            if len(images[-1]) != len(labels[-1]):
                raise ValueError("image and label counts differ")
            if labels[-1].size and not 0 <= labels[-1].min() <= labels[-1].max() < classes:
                raise ValueError(f"labels outside 0..{classes - 1}")
        except Exception as e:  # truncated, corrupt or foreign: name the file, not the unpickler
            raise DataFileError(f"{name}: {path} is not a readable {name} batch file "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                                "; download it again") from None
    return np.concatenate(images), np.concatenate(labels), classes


# --- STL-10


def _load_stl10(
    base: Path | None, train: bool, download: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Read stl10_binary/{train,test}_{X,y}.bin; images are stored column-major (C, W, H)."""

    def fetch(target: str) -> None:
        import torchvision

        torchvision.datasets.STL10(target, split="train" if train else "test", download=True)

    folder = _locate("stl10", base, download, fetch)
    prefix = "train" if train else "test"
    x_path, y_path = folder / f"{prefix}_X.bin", folder / f"{prefix}_y.bin"
    for path in (x_path, y_path):
        if not path.is_file():
            raise FileNotFoundError(f"stl10: missing file {path}")
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    image_bytes = 3 * STL10_IMAGE_SIZE * STL10_IMAGE_SIZE
    if labels.size and not 0 <= labels.min() <= labels.max() < 10:
        raise DataFileError(f"stl10: {y_path} holds a label outside 1..10")
    if x_path.stat().st_size != len(labels) * image_bytes:
        raise DataFileError(
            f"stl10: {x_path} holds {x_path.stat().st_size} bytes, expected "
            f"{len(labels)} images x {image_bytes} bytes"
        )
    raw = np.memmap(x_path, dtype=np.uint8, mode="r")
    # A memmap view: transposing (C, W, H) -> (C, H, W) is lazy; indexing later copies.
    images = raw.reshape(-1, 3, STL10_IMAGE_SIZE, STL10_IMAGE_SIZE).transpose(0, 1, 3, 2)
    return images, labels, 10


# --- ImageFolder


def _load_imagefolder(
    base: Path | None, split: str, image_size: int | None, num_samples: int | None, seed: int
) -> ArrayDataset:
    """Decode root/<split>/<class>/*.{jpg,jpeg,png} into memory at image_size (default 64).

    Meant for ImageNet-100-sized sets at small resolution: the whole split is held as uint8.
    Each image is resized so its shorter side is image_size, then centre-cropped to a square.
    Classes are the sorted folder names of root/train (or of the split's folder if there is no
    train folder), so train and test labels agree. "test" and "val" each fall back to the other.
    """
    if base is None:
        raise FileNotFoundError(
            f"imagefolder needs a root: pass root (data.root) or set ${DATA_ENV_VAR} to a folder "
            "holding train/ and val/ (or test/) with one subfolder per class"
        )
    names = ["train"] if split == "train" else [split, "val" if split == "test" else "test"]
    split_dir = next((base / n for n in names if (base / n).is_dir()), None)
    if split_dir is None:
        searched = ", ".join(str(base / n) for n in names)
        raise FileNotFoundError(f"imagefolder split {split!r} not found: searched {searched}")
    class_root = base / "train" if (base / "train").is_dir() else split_dir
    classes = sorted(p.name for p in class_root.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"imagefolder: no class folders in {class_root}")
    class_index = {c: i for i, c in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.name not in class_index:
            raise DataFileError(
                f"imagefolder: class {class_dir.name!r} in {split_dir} is not among the "
                f"{len(classes)} classes of {class_root}"
            )
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(file)
                labels.append(class_index[class_dir.name])
    if not files:
        raise FileNotFoundError(f"imagefolder: no {IMAGE_EXTENSIONS} images under {split_dir}")
    # Listed class by class; mixed in a fixed order, as CIFAR's files are, so that each
    # client's contiguous test slice holds every class and not one or two.
    mixed = np.random.default_rng(0).permutation(len(files))
    files = [files[i] for i in mixed]
    labels = [labels[i] for i in mixed]
    keep = _subsample(len(files), num_samples, seed, "imagefolder")
    if keep is not None:
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]
    size = image_size or IMAGEFOLDER_DEFAULT_IMAGE_SIZE
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)

    def decode(i: int) -> None:
        images[i] = torch.from_numpy(_read_image(files[i], size)).permute(2, 0, 1)

    # PIL releases the GIL while decoding, so threads give a real speed-up here.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, range(len(files))))
    return ArrayDataset(images, torch.tensor(labels, dtype=torch.int64), len(classes))


def _read_image(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: shorter side resized to `size`, then centre-cropped."""
    from PIL import Image

    try:
        return _decode_image(Image, path, size)
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataFileError(f"imagefolder: {path} is not a readable image ({e})") from None


def _decode_image(Image, path: Path, size: int) -> np.ndarray:  # noqa: N803 (the PIL module)
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when that is enough
        img = img.convert("RGB")
        width, height = img.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.array(img, dtype=np.uint8)


# --- shared helpers


def _subsample(total: int, num_samples: int | None, seed: int, name: str) -> np.ndarray | None:
    """Sorted random subset of `num_samples` indices out of `total`, or None for all of them."""
    if num_samples is None:
        return None
    if num_samples > total:
        raise SampleCountError(
            f"{name}: num_samples={num_samples} exceeds the {total} samples available", total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=num_samples, replace=False))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 images to size x size, in chunks to bound memory."""
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].to(torch.float32)
        resized = F.interpolate(
            chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out
