"""Damaged shards and bad sources: a clear error naming file and member, or
with skip_bad / on_error="skip" skipped, counted and reported."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bioscale.data_pipeline import DataError, build_reader, open_split
from bioscale.data_pipeline.names import READER_KINDS
from bioscale.data_pipeline.prepare import prepare
from bioscale.data_pipeline.shardfile import file_sha256, write_index, write_tar
from bioscale.data_pipeline.verify import verify_split

from .dp_helpers import encode, natural_image

KINDS = READER_KINDS


@pytest.fixture
def split_copy(imagenet_shards, tmp_path) -> Path:
    shutil.copytree(imagenet_shards / "train", tmp_path / "train")
    return tmp_path / "train"


def rewrite_shard(split_dir: Path, shard: str, edit) -> None:
    """Rewrite one shard with edit({key: {ext: bytes}}) applied, and refresh
    its manifest entry, so that only the semantic damage remains."""
    tar_path = split_dir / f"{shard}.tar"
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    edit(samples)
    write_tar(tar_path, [(k, sorted(m.items(), key=lambda e: e[0] == "cls")) for k, m in samples.items()])
    write_index(tar_path, split_dir / f"{shard}.idx")
    manifest = json.loads((split_dir / "manifest.json").read_text())
    for entry in manifest["shards"]:
        if entry["name"] == f"{shard}.tar":
            entry.update(
                bytes=tar_path.stat().st_size,
                sha256=file_sha256(tar_path),
                index_sha256=file_sha256(split_dir / f"{shard}.idx"),
            )
    (split_dir / "manifest.json").write_text(json.dumps(manifest))


def first_key(split_dir: Path, shard: str) -> str:
    with tarfile.open(split_dir / f"{shard}.tar") as tar:
        return tar.getnames()[0].split(".")[0]


def read_all(split_dir: Path, kind: str, **kwargs) -> int:
    reader = build_reader(split_dir, kind=kind, train=False, batch_size=4, num_workers=1, **kwargs)
    return sum(len(y) for _, y in reader)


def test_truncated_tar(split_copy):
    shard = split_copy / "train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    report = verify_split(split_copy)
    assert not report.ok
    assert any("train-000001.tar: member" in p and "damaged tar" in p for p in report.problems), report.problems
    with pytest.raises(DataError, match=r"train-000001\.tar: \d+ bytes, manifest says"):
        build_reader(split_copy, kind="wds")
    for kind in KINDS:  # skipping reads the samples before the cut
        with pytest.warns(UserWarning, match="train-000001.tar: sample .* truncated"):
            reader = build_reader(split_copy, kind=kind, train=False, batch_size=4, on_error="skip")
        assert 1 <= len(reader.skipped) <= 3 and sum(len(y) for _, y in reader) == 13 - len(reader.skipped)


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_jpeg_inside_a_shard(split_copy, kind):
    key = first_key(split_copy, "train-000002")
    member = f"train-000002.tar: member {key}.jpg"

    def corrupt(samples):
        jpeg = bytearray(samples[key]["jpg"])
        jpeg[200:] = b"\x00\xff" * ((len(jpeg) - 200) // 2) + b"\x00" * ((len(jpeg) - 200) % 2)
        samples[key]["jpg"] = bytes(jpeg[:400])

    rewrite_shard(split_copy, "train-000002", corrupt)
    report = verify_split(split_copy)
    assert len(report.problems) == 1 and member in report.problems[0] and "cannot decode" in report.problems[0]
    with pytest.raises(DataError, match=member):
        read_all(split_copy, kind)
    reader = build_reader(split_copy, kind=kind, train=False, batch_size=4, num_workers=1, on_error="skip")
    with pytest.warns(UserWarning, match=member):
        assert sum(len(y) for _, y in reader) == 12
    assert len(reader.skipped) == 1 and member in reader.skipped[0]


@pytest.mark.parametrize("kind", KINDS)
def test_label_out_of_range(split_copy, kind):
    key = first_key(split_copy, "train-000000")
    rewrite_shard(split_copy, "train-000000", lambda s: s[key].update(cls=b"7"))
    member = f"train-000000.tar: member {key}.cls: label 7 out of range"
    assert any(member in p for p in verify_split(split_copy).problems)
    with pytest.raises(DataError, match=member):
        read_all(split_copy, kind)
    with pytest.warns(UserWarning):
        assert read_all(split_copy, kind, on_error="skip") == 12


def test_missing_cls(split_copy):
    key = first_key(split_copy, "train-000003")
    rewrite_shard(split_copy, "train-000003", lambda s: s[key].pop("cls"))
    problem = f"train-000003.tar: sample {key}: missing .cls member"
    assert any(problem in p for p in verify_split(split_copy).problems)
    for kind in KINDS:
        with pytest.raises(DataError, match=f"train-000003.tar: sample '{key}' has no .cls member"):
            build_reader(split_copy, kind=kind)
        with pytest.warns(UserWarning, match=f"sample '{key}' has no .cls member"):
            assert read_all(split_copy, kind, on_error="skip") == 12


def test_shard_listed_but_absent(split_copy):
    (split_copy / "train-000001.tar").unlink()
    assert any("train-000001.tar: listed in the manifest but absent" in p for p in verify_split(split_copy).problems)
    with pytest.raises(DataError, match="train-000001.tar: listed in .* but absent"):
        open_split(split_copy)
    with pytest.raises(DataError, match="no manifest"):
        open_split(split_copy.parent)
    for kind in KINDS:
        with pytest.raises(DataError, match="train-000001.tar: listed in .* but absent"):
            build_reader(split_copy, kind=kind)
        with pytest.warns(UserWarning, match="all 4 samples of the shard skipped"):
            assert read_all(split_copy, kind, on_error="skip") == 9


def make_folder(root: Path, classes: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for k in range(n):
            (root / name / f"{k}.jpg").write_bytes(encode(natural_image(rng, 40, 30), "JPEG"))


def test_source_tree_with_an_empty_class(tmp_path):
    make_folder(tmp_path / "src", {"ant": 4, "bee": 0, "cat": 4})
    with pytest.raises(DataError, match=r"src/bee: class directory holds no images"):
        prepare("folder", tmp_path / "out", tmp_path / "src", val_size=2)
    summary = prepare("folder", tmp_path / "out", tmp_path / "src", val_size=2, skip_bad=True)
    info = open_split(tmp_path / "out" / "train")
    assert info.classes == ["ant", "cat"] and info.num_samples + 2 == 8
    assert summary["train"]["source_skipped"] == [{"id": "bee", "error": "empty class directory"}]
    assert info.manifest["source_skipped"] == summary["train"]["source_skipped"]


def test_undecodable_source_image(tmp_path):
    make_folder(tmp_path / "src", {"ant": 4, "cat": 4})
    (tmp_path / "src" / "cat" / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match=r"src/cat/2.jpg: cannot decode image"):
        prepare("folder", tmp_path / "out", tmp_path / "src", val_size=2)
    summary = prepare("folder", tmp_path / "out2", tmp_path / "src", val_size=2, skip_bad=True)
    skipped = summary["train"]["skipped"] + summary["val"]["skipped"]
    assert len(skipped) == 1 and skipped[0]["id"] == "cat/2.jpg"
    assert summary["train"]["num_samples"] + summary["val"]["num_samples"] == 7
    assert verify_split(tmp_path / "out2" / "train").ok
