"""Preparation from every source format: counts, hashes, pixel and label
round-trips, the held-out split, determinism and the ImageNet quirks."""

from __future__ import annotations

import filecmp
import gzip
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bioscale.data_pipeline import DataError, open_split
from bioscale.data_pipeline.prepare import held_out, prepare
from bioscale.data_pipeline.shardfile import file_sha256

from .dp_helpers import WNIDS, build_imagenet, encode, natural_image


def read_split(split_dir: Path) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} for every member of every shard, in shard order."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in open_split(split_dir).shards:
        with tarfile.open(shard.path) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def idx_array(path: Path) -> np.ndarray:
    data = gzip.open(path).read()
    ndim = data[3]
    shape = np.frombuffer(data[4 : 4 + 4 * ndim], dtype=">u4")
    return np.frombuffer(data[4 + 4 * ndim :], dtype=np.uint8).reshape(shape)


def test_mnist_idx_round_trip_and_manifest(idcoded_src, idcoded_shards):
    train_images = idx_array(idcoded_src / "train-images-idx3-ubyte.gz")
    test_images = idx_array(idcoded_src / "t10k-images-idx3-ubyte.gz")
    expected = {"train": 100, "val": 20, "test": 37}
    for split, count in expected.items():
        info = open_split(idcoded_shards / split)
        manifest = info.manifest
        assert (info.num_samples, manifest["num_samples"], info.num_classes) == (count, count, 10)
        assert info.classes == [str(i) for i in range(10)] and info.image_shape == (1, 28, 28)
        assert manifest["image"] == {"format": "png", "mode": "L", "channels": 1, "height": 28, "width": 28}
        assert sum(s.num_samples for s in info.shards) == count
        for shard in info.shards:
            assert shard.path.name.startswith(f"{split}-") and shard.path.stat().st_size == shard.bytes
            assert file_sha256(shard.path) == shard.sha256
            assert file_sha256(shard.index_path) == shard.index_sha256
        samples = read_split(idcoded_shards / split)
        assert len(samples) == count
        histogram = [0] * 10
        for key, members in samples.items():
            assert set(members) == {"png", "cls"}
            source = test_images if split == "test" else train_images
            image = Image.open(io.BytesIO(members["png"]))
            assert image.mode == "L"
            np.testing.assert_array_equal(np.asarray(image), source[int(key)])  # lossless
            offset = 1000 if split == "test" else 0
            assert int(members["cls"]) == (int(key) + offset) % 10
            histogram[int(members["cls"])] += 1
        assert manifest["class_counts"] == histogram


def test_heldout_split_is_disjoint_recorded_and_deterministic(idcoded_shards):
    train = set(read_split(idcoded_shards / "train"))
    val = set(read_split(idcoded_shards / "val"))
    assert not train & val and len(train | val) == 120
    heldout = open_split(idcoded_shards / "val").manifest["heldout"]
    assert heldout["seed"] == 3 and heldout["size"] == 20
    assert set(heldout["keys"]) == val
    assert heldout["ids"] == [f"train/{int(k):06d}" for k in sorted(val)]
    assert open_split(idcoded_shards / "train").manifest["heldout"] == heldout
    order, held = held_out(120, 20, seed=3)
    assert [f"{i:08d}" for i in held] == sorted(val)
    again_order, again = held_out(120, 20, seed=3)
    np.testing.assert_array_equal(held, again)
    np.testing.assert_array_equal(order, again_order)
    assert not np.array_equal(held_out(120, 20, seed=4)[1], held)
    # The training shards are shuffled, val and test keep source order.
    train_keys = list(read_split(idcoded_shards / "train"))
    assert train_keys != sorted(train_keys) and train_keys == [f"{i:08d}" for i in order]
    assert list(read_split(idcoded_shards / "test")) == sorted(read_split(idcoded_shards / "test"))


def same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.name == "manifest.json":  # identical except where the output lives
            assert json.loads((a / rel).read_text()) == json.loads((b / rel).read_text())
        else:
            assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def test_same_input_and_seed_give_identical_files_for_any_worker_count(imagenet_src, imagenet_shards, tmp_path):
    prepare("imagenet", tmp_path / "w2", imagenet_src, shard_size=4, val_size=5, seed=0, workers=2)
    same_tree(imagenet_shards, tmp_path / "w2")
    summary = prepare("imagenet", tmp_path / "w2", imagenet_src, shard_size=4, val_size=5, seed=0)
    assert all(s["rewritten"] == 0 for s in summary.values())  # a re-run verifies and keeps everything
    with pytest.raises(DataError, match="different settings"):
        prepare("imagenet", tmp_path / "w2", imagenet_src, shard_size=4, val_size=5, seed=1)


def test_imagenet_quirks_are_reencoded_counted_and_clean_jpegs_kept(imagenet_src, imagenet_shards):
    train, val, test = (open_split(imagenet_shards / s) for s in ("train", "val", "test"))
    assert train.classes == WNIDS and (train.num_samples, val.num_samples, test.num_samples) == (13, 5, 9)
    quirks = {}
    for info in (train, val):
        for name, n in info.manifest["quirks"].items():
            quirks[name] = quirks.get(name, 0) + n
    assert quirks == {"cmyk": 1, "grayscale": 1, "png_as_jpeg": 1}
    kept = 0
    for split in ("train", "val"):
        for key, members in read_split(imagenet_shards / split).items():
            assert set(members) == {"jpg", "cls"}
            image = Image.open(io.BytesIO(members["jpg"]))
            assert (image.format, image.mode) == ("JPEG", "RGB")
            i = int(key)
            wnid = WNIDS[int(members["cls"])]
            source = sorted((imagenet_src / "train").glob("*/*.JPEG"))[i]
            assert source.parent.name == wnid
            kept += members["jpg"] == source.read_bytes()
    assert kept == 15  # every clean JPEG byte for byte; the 3 quirks re-encoded
    truth = [(n - 1) % 3 for n in range(1, 10)]
    test_samples = read_split(imagenet_shards / "test")
    assert [int(m["cls"]) for m in test_samples.values()] == truth


def test_imagenet_devkit_labels_and_val_subfolders(tmp_path):
    devkit = tmp_path / "devkit"
    build_imagenet(devkit, val_labels="devkit", seed=5)
    prepare("imagenet", tmp_path / "out1", devkit, val_size=3, shard_size=50)
    truth = [(n - 1) % 3 for n in range(1, 10)]
    assert [int(m["cls"]) for m in read_split(tmp_path / "out1" / "test").values()] == truth
    # val/<wnid>/ layout (as produced by common preprocessing scripts)
    for n, t in enumerate(truth, start=1):
        (devkit / "val" / WNIDS[t]).mkdir(exist_ok=True)
        (devkit / "val" / f"ILSVRC2012_val_{n:08d}.JPEG").rename(devkit / "val" / WNIDS[t] / f"v{n}.JPEG")
    prepare("imagenet", tmp_path / "out2", devkit, val_size=3, shard_size=50)
    test = read_split(tmp_path / "out2" / "test")
    assert sorted(int(m["cls"]) for m in test.values()) == sorted(truth)


def test_max_side_downscales_at_preparation(imagenet_src, tmp_path):
    prepare("imagenet", tmp_path, imagenet_src, val_size=5, shard_size=50, max_side=64)
    info = open_split(tmp_path / "train")
    assert info.manifest["quirks"]["resized"] == info.num_samples
    assert info.manifest["image"]["size_range"]["max_width"] <= 64
    for members in read_split(tmp_path / "train").values():
        assert max(Image.open(io.BytesIO(members["jpg"])).size) == 64


def test_cifar_pickles_round_trip(cifar_src, tmp_path):
    prepare("cifar10", tmp_path, cifar_src, val_size=5, shard_size=8)
    train, val, test = (open_split(tmp_path / s) for s in ("train", "val", "test"))
    assert (train.num_samples, val.num_samples, test.num_samples) == (25, 5, 7)
    assert train.classes[0] == "airplane" and train.image_shape == (3, 32, 32)
    batches = [pickle.loads((cifar_src / "cifar-10-batches-py" / f"data_batch_{i}").read_bytes()) for i in range(1, 6)]
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = sum((b[b"labels"] for b in batches), [])
    for split in ("train", "val"):
        for key, members in read_split(tmp_path / split).items():
            image = Image.open(io.BytesIO(members["png"]))
            assert image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), images[int(key)])
            assert int(members["cls"]) == labels[int(key)]


def test_folder_tree_with_train_and_test(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 5), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / "src" / split / cls).mkdir(parents=True)
            for k in range(n):
                image = natural_image(rng, 40 + k, 30)
                fmt, ext = ("PNG", "png") if k % 2 else ("JPEG", "jpg")
                (tmp_path / "src" / split / cls / f"{k}.{ext}").write_bytes(encode(image.convert("RGB"), fmt))
    prepare("folder", tmp_path / "out", tmp_path / "src", val_size=2)
    train = open_split(tmp_path / "out" / "train")
    assert train.classes == ["cat", "dog"] and train.num_samples == 8
    test = read_split(tmp_path / "out" / "test")
    exts = sorted(next(e for e in m if e != "cls") for m in test.values())
    assert exts == ["jpg", "jpg", "png", "png"]  # formats kept, lossless stays lossless
