"""`reader=auto` picks WebDataset, with one warning line naming why, when DALI cannot
serve the device: here a DALI GPU pipeline on a machine without CUDA (a real failure of
DALI's pipeline build, not a mock)."""

from __future__ import annotations

import logging

import pytest
import torch

from bioscale.data_pipeline import build_reader, readers


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where DALI cannot open a GPU")
def test_auto_falls_back_to_wds_with_one_warning(idcoded_shards, caplog, monkeypatch):
    pytest.importorskip("nvidia.dali")
    monkeypatch.setattr(readers, "_PROBES", {})
    monkeypatch.setattr(readers, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger="bioscale.data")
    built = [
        build_reader(idcoded_shards / split, kind="auto", train=split == "train", batch_size=8, device="cuda")
        for split in ("train", "val", "test")
    ]
    assert [r.kind for r in built] == ["wds"] * 3
    warnings = [r for r in caplog.records if r.name == "bioscale.data" and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per process, not once per split
    message = warnings[0].getMessage()
    assert "\n" not in message and "using the WebDataset reader" in message
    assert "DALI cannot open GPU 0" in message and "CUDA is not available" in message


def test_auto_on_cpu_keeps_dali(idcoded_shards):
    pytest.importorskip("nvidia.dali")
    assert build_reader(idcoded_shards / "val", kind="auto", train=False, batch_size=8).kind == "dali"


def test_dali_that_does_not_load_falls_back(monkeypatch, caplog):
    """An installed DALI whose libraries fail to load raises OSError on import, not ImportError."""
    import builtins

    real_import = builtins.__import__

    def failing(name, *args, **kwargs):
        if name == "nvidia.dali" or name.startswith("nvidia.dali."):
            raise OSError("libcudart.so.13: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(readers, "_PROBES", {})
    monkeypatch.setattr(readers, "_WARNED", set())
    monkeypatch.setattr(builtins, "__import__", failing)
    caplog.set_level(logging.WARNING, logger="bioscale.data")
    assert readers.resolve_kind("auto", "cpu") == "wds"
    assert "DALI does not load (OSError: libcudart.so.13" in caplog.text
    assert readers.resolve_kind("dali", "cpu") == "dali"  # an explicit choice is kept (and fails loudly later)
