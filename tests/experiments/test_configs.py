"""Every experiment file under configs/ is a valid, buildable row of some table: it loads
(strictly: unknown keys and wrong types fail), its rule builds, its architecture builds on
the meta device (no memory, so the 260M-weight ImageNet nets are checked too), and the
tables point at exactly these files with matching rule, schedule and net."""

from __future__ import annotations

from pathlib import Path

import pytest

from bioscale.algorithms import build_rule
from bioscale.experiments.tables import TABLES
from bioscale.models import build_network
from bioscale.training.config_loader import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROW_FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if "base" not in p.relative_to(CONFIGS).parts)
TABLE_ROWS = {row.config: row for table in TABLES.values() for row in table.rows}


def test_there_is_a_config_per_row_of_every_paper_table():
    # ICLR: T1 10 + T2 (20 + conv) + T3 3; NeurIPS: MNIST 19, CIFAR 19, ImageNet 6; Fashion-MNIST 38;
    # beyond the paper (configs/later_rules): Fashion-MNIST 8, ImageNet 5
    assert len(ROW_FILES) == 34 + 44 + 38 + 8 + 5
    assert {str(p.relative_to(CONFIGS)) for p in ROW_FILES} == set(TABLE_ROWS)
    for path in (
        "fashion_mnist/fc_bp.yaml",
        "fashion_mnist/lc_bp.yaml",
        "fashion_mnist/lc_sdtp.yaml",
        "fashion_mnist/conv_bp.yaml",
        "fashion_mnist/lc_dtp_alt.yaml",
    ):
        assert path in TABLE_ROWS


@pytest.mark.parametrize("path", ROW_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_dry_run(path):
    cfg = load_config(path)
    rule = build_rule(cfg.algorithm)
    net = build_network(
        cfg.model.arch,
        with_inverses=rule.target_propagation,
        output_inverse=rule.uses_output_inverse,
        aux_dim=rule.aux_dim,
        device="meta",
    )
    assert next(net.parameters()).is_meta
    row = TABLE_ROWS[str(path.relative_to(CONFIGS))]
    assert (cfg.model.arch, cfg.algorithm.rule, cfg.algorithm.schedule) == (row.net, row.rule, row.schedule)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), "a config states its source (table / row) in its first comment"
    assert "Hyperparameters:" in text  # and where they come from
    if cfg.algorithm.rule == "dtp":
        assert "batch-MEAN" in text  # the α convention is stated where α is set
        assert cfg.algorithm.alpha < 0.01  # converted from the paper's batch-mean scale


def test_paper_versions_keep_their_inverse_losses():
    # ICLR trained every TP inverse with the denoising loss; NeurIPS used noise-preserving for DTP.
    for key, row in TABLE_ROWS.items():
        if row.rule == "dtp" and key.startswith(("iclr2018", "neurips2018")):
            expected = "denoising" if key.startswith("iclr2018") else "noise_preserving"
            assert load_config(CONFIGS / key).algorithm.inverse_loss == expected, key


def test_published_hyperparameters_reach_their_rows():
    # NeurIPS Table 5, MNIST FC and CIFAR LC (forward lr, σ, α on the batch-mean scale)
    cfg = load_config(CONFIGS / "neurips2018/mnist/fc_dtp_parallel.yaml")
    assert (cfg.optim.forward.lr, cfg.algorithm.sigma) == (7.57e-4, 0.361)
    assert cfg.algorithm.alpha * cfg.data.batch_size_per_rank == pytest.approx(0.150, rel=1e-3)
    cfg = load_config(CONFIGS / "neurips2018/cifar10_aug/lc_sdtp_alternating.yaml")
    assert (cfg.optim.forward.lr, cfg.algorithm.sigma, cfg.data.augment) == (1.09e-4, 0.024, "padcrop")
    assert load_config(CONFIGS / "iclr2018/cifar10/lc_bp.yaml").data.augment == "none"
    assert load_config(CONFIGS / "iclr2018/imagenet/lc_bp.yaml").train.epochs == 18


def test_paper_numbers_are_percentages_of_the_right_rows():
    for table in TABLES.values():
        keys = [row.key for row in table.rows]
        assert len(keys) == len(set(keys)), table.name
        for row in table.rows:
            if row.paper is not None:
                for value in (row.paper.train, row.paper.test, row.paper.test_top5):
                    assert value is None or 0.0 <= value <= 100.0
    mnist = TABLES["mnist"]
    assert mnist.row("iclr2018/mnist/lc_sdtp_alternating").paper.test == 1.63
    assert mnist.row("neurips2018/mnist/conv_bp").paper.test == 1.01
    assert TABLES["imagenet"].row("neurips2018/imagenet/lc_fa").paper.test_top5 == 82.54


def test_paper_numbers_from_another_net_are_marked():
    """The ICLR paper did not run FA, DFA, AO-SDTP or the ConvNet on its MNIST nets: those
    Fashion-MNIST rows carry the NeurIPS net's numbers, flagged and daggered in Markdown."""
    from bioscale.experiments.report import _paper_cell

    table = TABLES["fashion-mnist"]
    fa, bp = table.row("fashion_mnist/lc_fa"), table.row("fashion_mnist/lc_bp")
    assert fa.paper.other_net and "neurips" in fa.paper.source.lower()
    assert _paper_cell(fa, top5=False) == "0.00 / 1.26 †"
    assert not bp.paper.other_net and _paper_cell(bp, top5=False) == "0.00 / 1.46"
    marked = {row.key for row in table.rows if row.paper is not None and row.paper.other_net}
    assert "fashion_mnist/conv_bp" in marked and "fashion_mnist/fc_dtp" not in marked
