"""Real torch.distributed (gloo) processes: evaluation sees every sample
exactly once across ranks, and every rank gets the same number of training
batches, for both readers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .dp_helpers import decode_ids


def _rank_main(rank: int, world: int, init: str, shards: str, results: str) -> None:
    from bioscale.data_pipeline import build_reader

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        report = {}
        for kind in ("wds", "dali"):
            evaluation = build_reader(
                f"{shards}/test", kind=kind, train=False, batch_size=4, rank=rank, world_size=world, num_workers=1
            )
            ids, batches, correct = [], 0, torch.zeros(2)
            for images, labels in evaluation:
                batches += 1
                batch_ids = decode_ids(images)
                ids += batch_ids
                # what a trainer does: sum hits and counts, all_reduce once
                hits = (labels == torch.tensor(batch_ids, dtype=torch.int64) % 10).sum()
                correct += torch.tensor([float(hits), float(len(labels))])
            dist.all_reduce(correct)
            training = build_reader(
                f"{shards}/train",
                kind=kind,
                train=True,
                batch_size=8,
                rank=rank,
                world_size=world,
                seed=1,
                num_workers=1,
            )
            training.set_epoch(1)
            train_ids = [decode_ids(images) for images, _ in training]
            report[kind] = {
                "eval_ids": ids,
                "eval_batches": batches,
                "eval_len": len(evaluation),
                "reduced": correct.tolist(),
                "train_len": len(training),
                "train_batches": [len(b) for b in train_ids],
                "train_ids": sum(train_ids, []),
            }
        gathered = [None] * world
        dist.all_gather_object(gathered, report)
        if rank == 0:
            torch.save(gathered, results)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_partition_evaluation_and_balance_training(idcoded_shards, tmp_path, world):
    results = tmp_path / "results.pt"
    mp.spawn(
        _rank_main, args=(world, f"file://{tmp_path}/store", str(idcoded_shards), str(results)), nprocs=world, join=True
    )
    gathered = torch.load(results, weights_only=False)
    for kind in ("wds", "dali"):
        reports = [g[kind] for g in gathered]
        eval_ids = [i for r in reports for i in r["eval_ids"]]
        assert sorted(eval_ids) == list(range(1000, 1037)), kind  # exactly once, no padding
        expected_batches = math.ceil(math.ceil(37 / world) / 4)
        assert {r["eval_batches"] for r in reports} == {r["eval_len"] for r in reports} == {expected_batches}
        assert reports[0]["reduced"] == [37.0, 37.0]  # labels line up with samples; the sum is exact
        assert {r["train_len"] for r in reports} == {100 // (world * 8)}
        assert all(r["train_batches"] == [8] * (100 // (world * 8)) for r in reports)
        train_ids = [i for r in reports for i in r["train_ids"]]
        assert len(set(train_ids)) == len(train_ids)  # ranks take disjoint parts of one permutation
    assert [r["train_ids"] for r in (g["wds"] for g in gathered)] == [
        r["train_ids"] for r in (g["dali"] for g in gathered)
    ]  # both readers follow one plan
