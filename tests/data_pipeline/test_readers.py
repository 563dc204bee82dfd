"""The DALI and WebDataset+PIL readers: same output, exact epochs, resume."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from bioscale.data_pipeline import build_reader, open_split
from bioscale.data_pipeline.names import READER_KINDS

from .dp_helpers import decode_ids

KINDS = READER_KINDS


def collect(reader):
    return [(x.clone(), y.clone()) for x, y in reader]


def assert_close_images(batches_a, batches_b, per_image_mean: float, max_abs: float) -> None:
    assert len(batches_a) == len(batches_b)
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
        assert xa.shape == xb.shape and xa.dtype == xb.dtype == torch.float32
        assert torch.equal(ya, yb) and ya.dtype == torch.int64
        diff = (xa - xb).abs()
        assert diff.flatten(1).mean(1).max() < per_image_mean
        assert diff.max() < max_abs


@pytest.mark.parametrize(
    "split,train,augment",
    [("test", False, "auto"), ("val", False, "none"), ("train", True, "auto"), ("train", True, "resize224")],
)
def test_dali_and_wds_agree_on_imagenet_up_to_resampling(imagenet_shards, split, train, augment):
    kwargs = dict(train=train, batch_size=4, augment=augment, seed=11)
    wds = collect(build_reader(imagenet_shards / split, kind="wds", num_workers=0, **kwargs))
    dali = collect(build_reader(imagenet_shards / split, kind="dali", num_workers=1, **kwargs))
    assert wds[0][0].shape[1:] == (3, 224, 224)
    # Same samples, same crop boxes and flips; only the resampling kernels
    # differ (about 0.005 of a standard deviation on average here).
    assert_close_images(wds, dali, per_image_mean=0.02, max_abs=0.6)


def test_lossless_datasets_are_identical_in_both_readers(idcoded_shards, cifar_shards):
    for path, train in (
        (idcoded_shards / "test", False),
        (idcoded_shards / "train", True),
        (cifar_shards / "train", True),
        (cifar_shards / "test", False),
    ):
        kwargs = dict(train=train, batch_size=8, seed=5)
        wds = collect(build_reader(path, kind="wds", num_workers=2, **kwargs))
        dali = collect(build_reader(path, kind="dali", num_workers=2, **kwargs))
        assert_close_images(wds, dali, per_image_mean=1e-6, max_abs=1e-5)  # PNG, no resampling


def test_cifar_padcrop_and_flip_are_applied(cifar_shards):
    plain = collect(
        build_reader(cifar_shards / "train", kind="wds", train=True, batch_size=8, augment="none", num_workers=0)
    )
    augmented = collect(build_reader(cifar_shards / "train", kind="wds", train=True, batch_size=8, num_workers=0))
    assert plain[0][0].shape == augmented[0][0].shape == (8, 3, 32, 32)
    assert torch.equal(plain[0][1], augmented[0][1])  # same samples, only the pixels move
    zero = -torch.tensor(open_split(cifar_shards / "train").mean) / torch.tensor(open_split(cifar_shards / "train").std)
    padded = (augmented[0][0] - zero.view(1, 3, 1, 1)).abs().amax(dim=1) < 1e-5
    assert padded.any() and not torch.equal(plain[0][0], augmented[0][0])


@pytest.mark.parametrize("kind", KINDS)
def test_epoch_lengths_and_batch_shapes(idcoded_shards, kind):
    info = open_split(idcoded_shards / "test")
    assert (info.num_samples, info.image_shape, info.dataset) == (37, (1, 28, 28), "mnist")
    reader = build_reader(idcoded_shards / "test", kind=kind, train=False, batch_size=8)
    sizes = [len(y) for _, y in reader]
    assert len(reader) == len(sizes) == math.ceil(37 / 8) and sizes == [8, 8, 8, 8, 5]
    train = build_reader(idcoded_shards / "train", kind=kind, train=True, batch_size=8)
    sizes = [len(y) for _, y in train]
    assert len(train) == 100 // 8 == len(sizes) and set(sizes) == {8}
    ids = [
        i for x, _ in build_reader(idcoded_shards / "train", kind=kind, train=True, batch_size=8) for i in decode_ids(x)
    ]
    assert len(set(ids)) == len(ids) == 96  # a permutation, 4 random samples left for the next epoch
    tiny = build_reader(idcoded_shards / "test", kind=kind, train=True, batch_size=64)
    assert len(tiny) == 1 and [len(y) for _, y in tiny] == [64]  # fewer samples than a batch: wraps


@pytest.mark.parametrize("kind", KINDS)
def test_evaluation_reads_every_sample_once_in_order(idcoded_shards, kind):
    reader = build_reader(idcoded_shards / "test", kind=kind, train=False, batch_size=10)
    ids = [i for x, _ in reader for i in decode_ids(x)]
    assert ids == list(range(1000, 1037))
    assert [i for x, _ in reader for i in decode_ids(x)] == ids  # the next pass is the same


@pytest.mark.parametrize("kind", KINDS)
def test_training_order_is_seeded_per_epoch(idcoded_shards, kind):
    def epoch_ids(seed, epoch):
        reader = build_reader(idcoded_shards / "train", kind=kind, train=True, batch_size=10, seed=seed)
        reader.set_epoch(epoch)
        return [i for x, _ in reader for i in decode_ids(x)]

    assert epoch_ids(0, 0) == epoch_ids(0, 0)
    assert epoch_ids(0, 0) != epoch_ids(0, 1) and epoch_ids(0, 0) != epoch_ids(1, 0)
    reader = build_reader(idcoded_shards / "train", kind=kind, train=True, batch_size=10)
    first = [i for x, _ in reader for i in decode_ids(x)]
    second = [i for x, _ in reader for i in decode_ids(x)]  # a finished pass moves to the next epoch
    assert first == epoch_ids(0, 0) and second == epoch_ids(0, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_resume_mid_epoch_gives_the_batches_that_would_have_come(imagenet_shards, kind):
    def make():
        return build_reader(
            imagenet_shards / "train", kind=kind, train=True, batch_size=2, seed=4, image_size=64, num_workers=1
        )

    full = make()
    full.set_epoch(2)
    expected = collect(full)
    interrupted = make()
    interrupted.set_epoch(2)
    for k, _ in enumerate(interrupted):
        if k == 2:
            break
    state = interrupted.state_dict()
    assert (state["epoch"], state["batch"]) == (2, 3)
    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a trainer's usual call; keeps the position for the same epoch
    rest = collect(resumed)
    assert len(rest) == len(expected) - 3
    for (xa, ya), (xb, yb) in zip(rest, expected[3:]):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)  # same samples, same crops, bit for bit
    assert resumed.state_dict()["epoch"] == 3 and resumed.state_dict()["batch"] == 0
    other = build_reader(imagenet_shards / "train", kind=kind, train=True, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict(state)


def test_workers_do_not_change_the_output(idcoded_shards, imagenet_shards):
    for path, size in ((idcoded_shards / "train", None), (imagenet_shards / "train", 48)):
        kwargs = dict(kind="wds", train=True, batch_size=3, seed=9, image_size=size)
        a = collect(build_reader(path, num_workers=0, **kwargs))
        b = collect(build_reader(path, num_workers=2, **kwargs))
        assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_augment_modes_and_sizes(imagenet_shards, idcoded_shards):
    path = imagenet_shards / "train"
    assert build_reader(path, kind="wds", augment="resize224").image_shape == (3, 224, 224)
    assert build_reader(path, kind="wds", image_size=96).image_shape == (3, 96, 96)
    x, _ = next(iter(build_reader(path, kind="dali", batch_size=2, image_size=96)))
    assert x.shape == (2, 3, 96, 96)
    # normalised: roughly zero mean, unit scale for natural-looking images
    assert abs(x.mean()) < 1.0 and 0.2 < x.std() < 3.0
    with pytest.raises(ValueError, match="augment"):
        build_reader(path, augment="bogus")
    with pytest.raises(ValueError, match="kind"):
        build_reader(path, kind="tfrecord")
    with pytest.raises(ValueError, match="28x28"):
        build_reader(idcoded_shards / "test", kind="wds", train=False, image_size=32)
    x, _ = next(iter(build_reader(idcoded_shards / "test", kind="dali", image_size=32, augment="resize")))
    assert x.shape[1:] == (1, 32, 32)


def test_dali_feed_prepares_batches_off_the_training_thread(imagenet_shards, monkeypatch):
    """The DALI source callback runs on the thread that runs the pipeline (the training
    loop's); the shard reads and JPEG-header parses behind it run on the feed thread."""
    from bioscale.data_pipeline import dali_reader

    threads, original = set(), dali_reader._Feeder._prepare

    def recording(self, j):
        threads.add(threading.current_thread().name)
        return original(self, j)

    monkeypatch.setattr(dali_reader._Feeder, "_prepare", recording)
    reader = build_reader(imagenet_shards / "train", kind="dali", train=True, batch_size=4, seed=11)
    batches = collect(reader)
    assert batches and threads and all(name.startswith("dali-feed") for name in threads), threads
    # the same batches as the WebDataset reader's (order, labels): the thread changed nothing
    wds = collect(build_reader(imagenet_shards / "train", kind="wds", train=True, batch_size=4, seed=11))
    assert [y.tolist() for _, y in batches] == [y.tolist() for _, y in wds]
