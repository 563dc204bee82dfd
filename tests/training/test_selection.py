"""training.selection: the paper's 5-consecutive-epoch model selection and result.json."""

import json
import math

import pytest

from bioscale.training.selection import EpochErrors, read_result, select_epoch, write_result


def history(val, test=None):
    test = test or [v + 0.01 for v in val]
    return [
        {"epoch": i + 1, "val_top1_err": v, "val_top5_err": v / 4, "test_top1_err": t, "test_top5_err": t / 4}
        for i, (v, t) in enumerate(zip(val, test))
    ]


def test_window_with_lowest_mean_then_best_val_inside():
    #       epochs: 1    2    3    4     5     6     7     8    9
    val = [0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.6, 0.6]
    # a single lucky epoch (7) does not win on its own: windows of 3 -> means
    # [.633,.5,.5,.5,.367,.4,.433]; lowest: epochs 5-7; best inside: epoch 7
    s = select_epoch(history(val), window=3)
    assert (s.window_first_epoch, s.window_last_epoch, s.selected_epoch) == (5, 7, 7)
    assert s.window_mean_val_top1_err == pytest.approx((0.5 + 0.5 + 0.1) / 3)
    assert s.test_top1_err == pytest.approx(0.11) and s.test_top5_err == pytest.approx(0.11 / 4)
    assert s.epochs_completed == 9
    assert s.window_end.epoch == 7


def test_ties_go_to_the_earliest_window_and_epoch():
    s = select_epoch(history([0.3, 0.2, 0.2, 0.3, 0.2, 0.2]), window=2)
    assert (s.window_first_epoch, s.selected_epoch) == (2, 2)


def test_short_run_uses_the_whole_run():
    s = select_epoch(history([0.4, 0.2, 0.3]), window=5)
    assert (s.window_first_epoch, s.window_last_epoch, s.selected_epoch) == (1, 3, 2)
    assert s.window_end.val_top1_err == 0.3


def test_window_end_reading_differs_from_selected_epoch():
    s = select_epoch(history([0.5, 0.1, 0.2, 0.2, 0.2, 0.9]), window=5)
    assert (s.window_first_epoch, s.selected_epoch, s.window_end.epoch) == (1, 2, 5)
    assert s.window_end.test_top1_err == pytest.approx(0.21)


def test_diverged_epochs_are_never_selected():
    s = select_epoch(history([0.5, 0.4, math.nan, 0.3, 0.35]), window=2)
    assert (s.window_first_epoch, s.selected_epoch) == (4, 4)


def test_all_diverged_writes_null_not_nan(tmp_path):
    s = select_epoch(history([math.nan, math.nan]), window=5)
    data = json.loads(write_result(tmp_path, s).read_text())
    assert data["selected_epoch"] == 1 and data["val_top1_err"] is None


def test_missing_top5_and_test_are_allowed():
    s = select_epoch([EpochErrors(1, 0.4), EpochErrors(2, 0.3)], window=5)
    assert (s.selected_epoch, s.val_top5_err, s.test_top1_err) == (2, None, None)
    assert s.hparam_metrics() == {"result/val_top1_err": 0.3}


@pytest.mark.parametrize(
    "hist, window, match",
    [
        ([], 5, "at least one"),
        (history([0.3, 0.2]), 0, "window must be >= 1"),
        ([{"epoch": 1, "val_top1_err": 0.3}, {"epoch": 3, "val_top1_err": 0.2}], 5, "consecutive"),
        ([{"epoch": 1, "val_top1_err": 30.0}], 5, "val_top1_err = 30.0 is not a fraction"),
        ([{"epoch": 1, "val_top1_err": 0.3, "test_top1_err": -0.1}], 5, "test_top1_err"),
        ([{"epoch": 1, "val_top1_err": None}], 5, "validation is needed"),
    ],
)
def test_bad_history(hist, window, match):
    with pytest.raises(ValueError, match=match):
        select_epoch(hist, window)


def test_write_and_read_result(tmp_path):
    s = select_epoch(history([0.4, 0.3, 0.2, 0.25, 0.3, 0.35]), window=5)
    path = write_result(tmp_path / "run", s, extra={"name": "fmnist_lc_sdtp", "world_size": 2})
    data = json.loads(path.read_text())
    assert data == read_result(tmp_path / "run")
    for key in ("selected_epoch", "val_top1_err", "val_top5_err", "test_top1_err", "test_top5_err", "epochs_completed"):
        assert key in data
    assert (data["selected_epoch"], data["epochs_completed"], data["name"]) == (3, 6, "fmnist_lc_sdtp")
    assert 0 <= data["test_top1_err"] <= 1 and data["window_end"]["epoch"] == 6
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["result.json"]  # no temp left
    with pytest.raises(ValueError, match="overwrite"):
        write_result(tmp_path / "run", s, extra={"selected_epoch": 1})
    with pytest.raises(FileNotFoundError, match="has not finished"):
        read_result(tmp_path / "other")
