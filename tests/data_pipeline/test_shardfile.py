"""The shard format against the reference tools: DALI's `wds2idx`, DALI's
own webdataset reader, and the `webdataset` library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bioscale.data_pipeline import open_split
from bioscale.data_pipeline.shardfile import index_lines, write_tar


def test_index_is_byte_identical_to_wds2idx(imagenet_shards, idcoded_shards, tmp_path):
    wds2idx = Path(sys.executable).with_name("wds2idx")
    for info in (open_split(imagenet_shards / "train"), open_split(idcoded_shards / "test")):
        for shard in info.shards:
            out = tmp_path / f"{shard.path.stem}.idx"
            subprocess.run([str(wds2idx), str(shard.path), str(out)], check=True, capture_output=True)
            assert out.read_text() == shard.index_path.read_text()


def test_tar_bytes_are_fixed_and_keys_without_dots(tmp_path):
    samples = [("a", [("png", b"x" * 10), ("cls", b"3")]), ("b", [("png", b"y" * 700), ("cls", b"12")])]
    write_tar(tmp_path / "one.tar", samples)
    write_tar(tmp_path / "two.tar", samples)
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    assert index_lines(tmp_path / "one.tar")[0] == "v1.2 2"
    with pytest.raises(ValueError, match="dot"):
        write_tar(tmp_path / "bad.tar", [("a.b", [("png", b"")])])


def test_dali_webdataset_reader_reads_our_index(imagenet_shards):
    from nvidia.dali import fn, pipeline_def

    info = open_split(imagenet_shards / "test")

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipeline():
        jpegs, labels = fn.readers.webdataset(
            paths=[str(s.path) for s in info.shards],
            index_paths=[str(s.index_path) for s in info.shards],
            ext=["jpg;png", "cls"],
            missing_component_behavior="error",
            name="Reader",
        )
        return fn.decoders.image(jpegs), labels

    pipe = pipeline()
    pipe.build()
    assert pipe.epoch_size("Reader") == info.num_samples
    labels = []
    while len(labels) < info.num_samples:
        images, cls = pipe.run()
        labels += [int(bytes(np.array(c)).decode()) for c in cls]
    truth = [(n - 1) % 3 for n in range(1, 10)]
    assert labels[: info.num_samples] == truth


def test_webdataset_library_reads_the_shards(idcoded_shards):
    import webdataset as wds

    info = open_split(idcoded_shards / "val")
    dataset = wds.WebDataset([str(s.path) for s in info.shards], shardshuffle=False).decode("l").to_tuple("png", "cls")
    samples = list(dataset)
    assert len(samples) == info.num_samples
    assert all(image.shape == (28, 28) and 0 <= label < 10 for image, label in samples)
