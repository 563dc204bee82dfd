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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_dali_batches_stay_valid_after_the_next_two_are_fetched(imagenet_shards, device):
    """The reader hands out DALI's buffers without a copy where DALI never reuses them;
    a batch must still hold its values after the next two batches are produced, and come
    on the requested device, NCHW float32, normalised."""
    kwargs = dict(kind="dali", train=True, batch_size=4, seed=5, num_workers=2)
    reference = [(x.cpu().clone(), y.cpu().clone()) for x, y in build_reader(imagenet_shards / "train", **kwargs)]
    kept = []
    for x, y in build_reader(imagenet_shards / "train", device=device, **kwargs):
        assert x.device.type == device and x.dtype == torch.float32 and x.dim() == 4 and x.shape[1] == 3
        kept.append((x, y))
    assert len(kept) == len(reference) >= 3
    for (x, y), (xr, yr) in zip(kept, reference):
        assert torch.equal(y.cpu(), yr)
        # the same images (CPU vs nvJPEG decoding differ slightly on the GPU)
        tol = 0.0 if device == "cpu" else 0.05
        assert (x.cpu() - xr).abs().flatten(1).mean(1).max() <= tol
    x = torch.cat([x.cpu() for x, _ in kept])
    assert abs(float(x.mean())) < 1.0 and 0.2 < float(x.std()) < 3.0  # mean/std-normalised
