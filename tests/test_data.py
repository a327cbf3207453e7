"""Tests for splitray.data: synthetic data, real-data loaders, batching/augmentation, partitions."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splitray.config import ConfigError, load_config
from splitray.data import (
    ArrayDataset,
    DataFileError,
    DownloadError,
    class_cycle_order,
    load_dataset,
    partition,
    resolve_data_root,
)
from splitray.runtime import prepare


def _shared_cifar10() -> Path | None:
    """The shared CIFAR-10 copy beside the repo, or under $SPLITRAY_DATA; None if absent."""
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"]
    if os.environ.get("SPLITRAY_DATA"):
        env = Path(os.environ["SPLITRAY_DATA"])
        candidates += [env / "cifar10", env]
    for path in candidates:
        if (path / "cifar-10-batches-py" / "test_batch").is_file():
            return path
    return None


def _write_cifar(folder: Path, files: dict[str, int], label_key: str, num_classes: int) -> None:
    """A tiny CIFAR-style pickle layout: each file gets `n` random images and labels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in files.items():
        batch = {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, num_classes, size=n).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def _write_fake_cifar10(root: Path, per_batch: int = 20) -> None:
    files = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": per_batch}
    _write_cifar(root / "cifar-10-batches-py", files, "labels", 10)


# --- synthetic


def test_synthetic_deterministic_by_seed_and_differs_across_seeds() -> None:
    a = load_dataset("synthetic", num_samples=64, image_size=16, seed=3)
    b = load_dataset("synthetic", num_samples=64, image_size=16, seed=3)
    c = load_dataset("synthetic", num_samples=64, image_size=16, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_synthetic_shapes_dtypes_and_defaults() -> None:
    train = load_dataset("synthetic")
    test = load_dataset("synthetic", "test")
    assert train.images.shape == (2048, 3, 32, 32) and len(test) == 512
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    odd = load_dataset("synthetic", num_samples=30, image_size=11, channels=1, num_classes=3)
    assert odd.images.shape == (30, 1, 11, 11) and odd.num_classes == 3
    assert torch.equal(odd.labels.bincount(), torch.tensor([10, 10, 10]))  # balanced
    assert 0 < odd.images.float().std() < 128  # neither constant nor saturated


def test_synthetic_train_and_test_share_prototypes_but_not_samples() -> None:
    kw = dict(num_samples=2000, image_size=16, num_classes=4)

    def class_means(ds: ArrayDataset) -> torch.Tensor:
        x = ds.images.float()
        return torch.stack([x[ds.labels == k].mean(0) for k in range(4)])

    train = load_dataset("synthetic", "train", seed=0, **kw)
    test = load_dataset("synthetic", "test", seed=0, **kw)
    other = load_dataset("synthetic", "test", seed=1, **kw)
    assert not torch.equal(train.images[:10], test.images[:10])
    same = (class_means(train) - class_means(test)).abs().mean()
    different = (class_means(train) - class_means(other)).abs().mean()
    assert same < 8 and different > 3 * same


def test_synthetic_is_learnable_by_a_tiny_cnn() -> None:
    torch.manual_seed(0)
    train = load_dataset("synthetic", "train", num_samples=1024, image_size=16, seed=0)
    test = load_dataset("synthetic", "test", num_samples=500, image_size=16, seed=0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(250):
        x, y = train.batch(torch.randint(0, len(train), (64,), generator=gen))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x, y = test.batch(np.arange(len(test)))
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.4, f"tiny CNN reached only {accuracy:.2f} (chance 0.10)"


# --- ArrayDataset


def test_batch_range_dtype_and_values() -> None:
    ds = load_dataset("synthetic", num_samples=50, image_size=8, seed=1)
    idx = np.array([3, 0, 7])
    x, y = ds.batch(idx)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 8, 8)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(y, ds.labels[idx])
    assert torch.allclose(x * 255, ds.images[idx].float())
    x_t, _ = ds.batch(torch.tensor([3, 0, 7]))
    assert torch.equal(x, x_t)


def test_augment_deterministic_changes_images_and_is_a_padded_crop_or_flip() -> None:
    ds = load_dataset("synthetic", num_samples=32, image_size=8, seed=2)
    idx = np.arange(32)
    a, _ = ds.batch(idx, augment=True, generator=torch.Generator().manual_seed(5))
    b, _ = ds.batch(idx, augment=True, generator=torch.Generator().manual_seed(5))
    c, _ = ds.batch(idx, augment=True, generator=torch.Generator().manual_seed(6))
    plain, _ = ds.batch(idx)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, plain) and 0.0 <= a.min() and a.max() <= 1.0
    # Every augmented image must equal one of the 9 x 9 crops of the 4-px zero-padded original,
    # flipped or not; over 32 images both flips and several offsets must occur.
    padded = torch.nn.functional.pad(plain, (4, 4, 4, 4))
    seen = set()
    for i in range(32):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(
                a[i],
                padded[i, :, dy : dy + 8, dx : dx + 8].flip(-1)
                if flip
                else padded[i, :, dy : dy + 8, dx : dx + 8],
            )
        ]
        assert matches, f"augmented image {i} is not a padded crop/flip of the original"
        seen.update(matches)
    assert {f for _, _, f in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 5


def test_subset_copies_selected_samples() -> None:
    ds = load_dataset("synthetic", num_samples=20, image_size=4, seed=0)
    sub = ds.subset(np.array([5, 2]))
    assert len(sub) == 2 and sub.num_classes == ds.num_classes
    assert torch.equal(sub.images[0], ds.images[5]) and torch.equal(sub.labels, ds.labels[[5, 2]])
    sub.images.zero_()
    assert ds.images[5].any()


def test_class_cycle_order_puts_class_j_at_position_j_of_every_batch() -> None:
    labels = np.repeat(np.arange(3), 8)                  # 8 samples of each of 3 classes
    order = np.random.default_rng(0).permutation(24)
    out = class_cycle_order(order, labels, num_classes=3, batch_size=6)
    assert sorted(out) == list(range(24))
    assert (labels[out] == np.arange(24) % 6 % 3).all()
    for c in range(3):  # within a class, the shuffled sequence is kept
        assert list(out[labels[out] == c]) == list(order[labels[order] == c])


def test_class_cycle_order_takes_the_class_with_most_left_when_one_runs_out() -> None:
    labels = np.array([0, 1, 1, 1, 2, 2, 2])              # class 0 runs out after batch 0
    out = class_cycle_order(np.arange(7), labels, num_classes=3, batch_size=3)
    # Batch 1's position 0 wants class 0: classes 1 and 2 tie at two left, the lower wins; its
    # positions 1 and 2 then get their own classes, and the last, partial batch the one left.
    assert list(out) == [0, 1, 4, 2, 3, 5, 6]
    assert list(labels[out]) == [0, 1, 2, 1, 1, 2, 2]


def test_class_cycle_order_turns_the_classes_of_a_batch_smaller_than_the_class_count() -> None:
    # 10 classes, batches of 4: each epoch's positions hold 4 classes, turning with the epoch, so
    # the first two batches of five epochs (a steps_per_epoch cap) see every class; a fixed
    # choice showed only classes 0-3.
    labels = np.repeat(np.arange(10), 6)
    order = np.random.default_rng(0).permutation(60)
    seen = set()
    for epoch in range(5):
        out = class_cycle_order(order, labels, num_classes=10, batch_size=4, epoch=epoch)
        assert sorted(out) == list(range(60))
        assert (labels[out[:8]] == (epoch * 4 + np.arange(8) % 4) % 10).all()
        seen |= set(labels[out[:8]].tolist())
    assert seen == set(range(10))
    three = labels % 3  # batches at least the class count: the same order every epoch
    same = class_cycle_order(order, three, num_classes=3, batch_size=6, epoch=3)
    assert (same == class_cycle_order(order, three, num_classes=3, batch_size=6)).all()


def test_array_dataset_rejects_bad_inputs() -> None:
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    labels = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(images.float(), labels, 2)
    with pytest.raises(ValueError, match="int64"):
        ArrayDataset(images, labels.int(), 2)
    with pytest.raises(ValueError, match="length"):
        ArrayDataset(images, labels[:3], 2)
    with pytest.raises(ValueError, match="labels must lie"):
        ArrayDataset(images, labels + 2, 2)
    ds = ArrayDataset(images, labels, 2)
    with pytest.raises(ValueError, match="1-D integer"):
        ds.batch(np.array([0.5, 1.0]))


# --- partition


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_covers_every_index_once_and_is_deterministic(scheme: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=1003)
    parts = partition(labels, 17, scheme, alpha=0.3, seed=4)
    again = partition(labels, 17, scheme, alpha=0.3, seed=4)
    other = partition(labels, 17, scheme, alpha=0.3, seed=5)
    assert len(parts) == 17 and all(len(p) >= 1 for p in parts)
    assert all(p.dtype == np.int64 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1003))
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(parts, other, strict=True))


def test_iid_parts_are_near_equal_and_shards_are_label_sorted() -> None:
    labels = np.repeat(np.arange(10), 100)
    sizes = [len(p) for p in partition(labels, 7, "iid")]
    assert max(sizes) - min(sizes) <= 1
    shards = partition(labels, 50, "shards", shards_per_client=2, seed=1)
    # 100 shards of 10 samples over 10 classes of 100: each shard is one class.
    assert all(len(np.unique(labels[p])) <= 2 for p in shards)
    assert all(len(p) == 20 for p in shards)


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    labels = np.repeat(np.arange(10), 200)

    def mean_classes_per_client(alpha: float) -> float:
        parts = partition(labels, 20, "dirichlet", alpha=alpha, seed=0)
        return float(np.mean([len(np.unique(labels[p])) for p in parts]))

    skewed, medium = mean_classes_per_client(0.05), mean_classes_per_client(0.5)
    uniform = mean_classes_per_client(100.0)
    assert skewed < 4 < medium < uniform and uniform > 9.5


def test_dirichlet_fixup_gives_every_client_a_sample() -> None:
    labels = np.repeat(np.arange(2), 15)
    parts = partition(labels, 30, "dirichlet", alpha=0.01, seed=0)
    assert all(len(p) == 1 for p in parts)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_clients=3, scheme="bogus"), "unknown partition scheme"),
        (dict(num_clients=0), "num_clients"),
        (dict(num_clients=11), "exceeds"),
        (dict(num_clients=2, scheme="dirichlet", alpha=0.0), "alpha"),
        (dict(num_clients=3, scheme="shards", shards_per_client=4), "exceeds"),
        (dict(num_clients=3, scheme="shards", shards_per_client=0), "shards_per_client"),
    ],
)
def test_partition_bad_args(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        partition(np.arange(10) % 2, **kwargs)


# --- load_dataset arguments and roots


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(name="mnist"), "unknown dataset"),
        (dict(name="synthetic", split="dev"), "unknown split"),
        (dict(name="synthetic", num_samples=0), "num_samples"),
        (dict(name="synthetic", image_size=0), "image_size"),
        (dict(name="synthetic", num_classes=0), "num_classes"),
        (dict(name="imagefolder", root=".", download=True), "download"),
    ],
)
def test_load_dataset_bad_args(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_resolve_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SPLITRAY_DATA", raising=False)
    assert resolve_data_root(None) is None
    monkeypatch.setenv("SPLITRAY_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    assert resolve_data_root("/x/y") == Path("/x/y")


def test_missing_root_raises_helpful_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="searched .*cifar-10-batches-py.*SPLITRAY_DATA"):
        load_dataset("cifar10", root=tmp_path / "nowhere")
    monkeypatch.delenv("SPLITRAY_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="no data root given.*data.download=true"):
        load_dataset("stl10")


# --- CIFAR (fake layouts, download plumbing, real shared copy)


def test_cifar_layouts_found_from_several_roots(tmp_path: Path, monkeypatch) -> None:
    _write_fake_cifar10(tmp_path / "cifar10")
    for root in (tmp_path, tmp_path / "cifar10", tmp_path / "cifar10" / "cifar-10-batches-py"):
        assert len(load_dataset("cifar10", "test", root=root)) == 20
    monkeypatch.setenv("SPLITRAY_DATA", str(tmp_path))
    train = load_dataset("cifar10")
    assert train.images.shape == (100, 3, 32, 32) and train.num_classes == 10


def test_cifar_subsample_is_random_and_deterministic(tmp_path: Path) -> None:
    _write_fake_cifar10(tmp_path)
    full = load_dataset("cifar10", root=tmp_path)
    a = load_dataset("cifar10", root=tmp_path, num_samples=30, seed=1)
    b = load_dataset("cifar10", root=tmp_path, num_samples=30, seed=1)
    c = load_dataset("cifar10", root=tmp_path, num_samples=30, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, full.images[:30])  # a random subset, not the first N
    with pytest.raises(ValueError, match="exceeds"):
        load_dataset("cifar10", root=tmp_path, num_samples=101)
    small = load_dataset("cifar10", root=tmp_path, num_samples=5, image_size=8)
    assert small.images.shape == (5, 3, 8, 8) and small.images.dtype == torch.uint8


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-100-python", {"train": 12, "test": 7}, "fine_labels", 100)
    train = load_dataset("cifar100", root=tmp_path)
    test = load_dataset("cifar100", "val", root=tmp_path)
    assert len(train) == 12 and len(test) == 7 and train.num_classes == 100
    with open(tmp_path / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f)
    assert test.labels.tolist() == raw["fine_labels"]
    assert torch.equal(test.images.reshape(7, -1), torch.from_numpy(raw["data"]))


def test_cifar_download_uses_torchvision(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    calls = []

    def fake_cifar10(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        _write_fake_cifar10(Path(root), per_batch=3)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    ds = load_dataset("cifar10", "test", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), False, True)] and len(ds) == 3


def test_a_failed_download_is_a_one_line_config_error(tmp_path: Path, monkeypatch) -> None:
    # urllib's error used to escape as an 87-line traceback.
    import urllib.error

    import torchvision

    def offline(root: str, train: bool, download: bool) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DownloadError, match="downloading cifar10 into .* failed: <urlopen error"):
        load_dataset("cifar10", "test", root=tmp_path, download=True)
    cfg = load_config(overrides=["data.name=cifar10", "data.download=true",
                                 f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="data.download: downloading cifar10 into"):
        prepare(cfg)
    with pytest.raises(ConfigError, match="data.download: true is not allowed with data.name "
                                          "imagefolder"):
        load_config(overrides=["data.name=imagefolder", "data.download=true"])


def test_a_broken_download_archive_is_a_download_error(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    def corrupt(root: str, train: bool, download: bool) -> None:
        raise RuntimeError("File not found or corrupted.")  # torchvision's checksum mismatch

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", corrupt)
    with pytest.raises(DownloadError, match="File not found or corrupted"):
        load_dataset("cifar10", "test", root=tmp_path, download=True)


@pytest.fixture(scope="module")
def shared_cifar10() -> Path:
    path = _shared_cifar10()
    if path is None:
        pytest.skip("shared CIFAR-10 copy not found (../shared/data/cifar10 or $SPLITRAY_DATA)")
    return path


def test_real_cifar10_subsampled_train(shared_cifar10: Path) -> None:
    ds = load_dataset("cifar10", "train", root=shared_cifar10, num_samples=500)
    assert ds.images.shape == (500, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert 0 <= ds.labels.min() and ds.labels.max() <= 9 and len(ds.labels.unique()) == 10


def test_real_cifar10_full_test_split(shared_cifar10: Path) -> None:
    ds = load_dataset("cifar10", "test", root=shared_cifar10)
    assert len(ds) == 10_000 and ds.images.shape[1:] == (3, 32, 32)
    assert torch.equal(ds.labels.bincount(), torch.full((10,), 1000))


# --- STL-10 and ImageFolder (tiny fakes)


def test_stl10_binary_layout(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {
        s: rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)
        for s, n in (("train", 4), ("test", 3))
    }
    labels = {"train": np.array([1, 10, 5, 2], np.uint8), "test": np.array([3, 3, 7], np.uint8)}
    for split in ("train", "test"):
        # Stored column-major per image: the file holds (C, W, H).
        images[split].transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        labels[split].tofile(folder / f"{split}_y.bin")
    train = load_dataset("stl10", root=tmp_path)
    assert torch.equal(train.images, torch.from_numpy(images["train"]))
    assert train.labels.tolist() == [0, 9, 4, 1] and train.num_classes == 10
    test = load_dataset("stl10", "test", root=tmp_path, image_size=32, num_samples=2)
    assert test.images.shape == (2, 3, 32, 32)
    (folder / "test_X.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="bytes"):
        load_dataset("stl10", "test", root=tmp_path)
    np.array([1, 11, 5, 2], np.uint8).tofile(folder / "train_y.bin")
    with pytest.raises(DataFileError, match="train_y.bin holds a label outside 1..10"):
        load_dataset("stl10", root=tmp_path)


def test_cifar_labels_outside_the_classes_are_a_data_file_error(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py", {"test_batch": 4}, "labels", 11)
    with pytest.raises(DataFileError, match=r"test_batch is not a readable cifar10 batch file "
                                            r"\(ValueError: labels outside 0..9\)"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_imagefolder(tmp_path: Path) -> None:
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255), "emu": (0, 255, 0)}
    for split, count in (("train", 3), ("val", 2)):
        for name, colour in colours.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40 + 10 * i, 30), colour).save(
                    tmp_path / split / name / f"{i}.{'png' if i % 2 else 'jpg'}"
                )
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    train = load_dataset("imagefolder", root=tmp_path, image_size=16)
    assert train.images.shape == (9, 3, 16, 16) and train.num_classes == 3
    # Mixed in a fixed order, not class by class: a contiguous slice (a client's test slice)
    # holds several classes.
    assert sorted(train.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(len(set(train.labels[k:k + 3].tolist())) > 1 for k in (0, 3, 6))
    assert load_dataset("imagefolder", root=tmp_path, image_size=16).labels.tolist() == \
        train.labels.tolist()
    # Each image is its class colour (JPEG is lossy, so allow some error).
    for img, label in zip(train.images, train.labels, strict=True):
        expected = torch.tensor(list(colours.values())[label], dtype=torch.float32)
        assert (img.float().mean((1, 2)) - expected).abs().max() < 8
    test = load_dataset("imagefolder", "test", root=tmp_path)  # falls back to val/
    assert test.images.shape == (6, 3, 64, 64)
    with pytest.raises(FileNotFoundError, match="imagefolder split"):
        load_dataset("imagefolder", root=tmp_path / "train")
