"""DALI with `mixed` (GPU) decoding gives the CPU pipeline's output (runs only
where CUDA is available; the CPU tests cover the rest of the reader)."""

from __future__ import annotations

import pytest
import torch

from bioscale.data_pipeline import build_reader


@pytest.mark.gpu
@pytest.mark.parametrize("train", [False, True])
def test_mixed_decoding_matches_cpu(imagenet_shards, idcoded_shards, train):
    for path in (imagenet_shards / "train", idcoded_shards / "test"):
        kwargs = dict(kind="dali", train=train, batch_size=4, seed=2, num_workers=2)
        cpu = [(x.clone(), y.clone()) for x, y in build_reader(path, device="cpu", **kwargs)]
        gpu = [(x.cpu(), y.cpu()) for x, y in build_reader(path, device="cuda", **kwargs)]
        assert len(cpu) == len(gpu)
        for (xc, yc), (xg, yg) in zip(cpu, gpu):
            assert torch.equal(yc, yg)
            # nvJPEG and libjpeg-turbo differ in IDCT and chroma upsampling
            assert (xc - xg).abs().flatten(1).mean(1).max() < 0.05
