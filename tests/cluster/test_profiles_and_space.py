"""Cluster profiles and search spaces (no SLURM needed): the paper's Table 4
space per rule, seeded sampling, space files and profile files with bad input."""

from __future__ import annotations

import math

import pytest

from bioscale.cluster.profile import ProfileError, load_profile
from bioscale.cluster.search_space import as_overrides, load_space, paper_space, sample
from bioscale.training.config import ConfigError
from bioscale.training.config_loader import load_config


def test_local_profile_becomes_submitit_parameters():
    p = load_profile("local")
    params = p.executor_parameters()
    assert params["slurm_partition"] == "debug" and params["tasks_per_node"] == 1
    assert params["slurm_additional_parameters"]["requeue"] is True
    assert params["slurm_setup"][0] == "export OMP_NUM_THREADS=1"


def test_gpu_profile_runs_one_task_per_gpu_and_cli_overrides_win():
    p = load_profile("example_gpu", partition="big", gpus_per_node=4, tasks_per_node=1)
    assert p.tasks == 4 and p.world_size == 4 and p.partition == "big"
    assert "command line" in p.source


@pytest.mark.parametrize(
    "text,message",
    [
        ("partitoin: x\n", "unknown profile key 'partitoin' (did you mean 'partition'?)"),
        ("nodes: two\n", "nodes: expected int"),
        ("timeout_min: 1\nsignal_delay_s: 90\n", "signal_delay_s = 90: must be shorter than the time limit"),
        ("- a\n", "must be a mapping"),
    ],
)
def test_bad_profile_files_name_the_key(tmp_path, text, message):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_profile(str(path))


def test_unknown_profile_name_lists_the_known_ones():
    with pytest.raises(ProfileError, match="unknown cluster profile 'locl'.*did you mean 'local'"):
        load_profile("locl")


@pytest.mark.parametrize(
    "rule,keys",
    [
        ("bp", {"optim.forward.lr", "optim.forward.beta2", "optim.forward.eps"}),
        ("fa", {"optim.forward.lr", "optim.forward.beta2", "optim.forward.eps"}),
        (
            "sdtp",
            {
                "optim.forward.lr",
                "optim.forward.beta2",
                "optim.forward.eps",
                "optim.inverse.lr",
                "optim.inverse.beta2",
                "optim.inverse.eps",
                "algorithm.sigma",
            },
        ),
        (
            "dtp",
            {
                "optim.forward.lr",
                "optim.forward.beta2",
                "optim.forward.eps",
                "optim.inverse.lr",
                "optim.inverse.beta2",
                "optim.inverse.eps",
                "algorithm.sigma",
                "algorithm.alpha",
            },
        ),
    ],
)
def test_paper_space_per_rule_samples_within_table_4(rule, keys):
    space = paper_space(rule)
    assert set(space) == keys
    for trial in range(200):
        v = sample(space, seed=3, trial=trial)
        assert 1e-5 <= v["optim.forward.lr"] <= 3e-4
        assert v["optim.forward.beta2"] in (0.99, 0.999) and v["optim.forward.eps"] in (1e-4, 1e-6, 1e-8)
        if "algorithm.sigma" in v:
            assert 0.01 <= v["algorithm.sigma"] <= 0.3 and 1e-5 <= v["optim.inverse.lr"] <= 3e-4
        if "algorithm.alpha" in v:
            assert 0.01 <= v["algorithm.alpha"] <= 0.2
        cfg = load_config(None, [f"algorithm.rule={rule}", *as_overrides(v)])  # parses back exactly
        assert cfg.optim.forward.lr == v["optim.forward.lr"]
    # log-uniform: about half the draws below the geometric midpoint
    lrs = [sample(space, 3, t)["optim.forward.lr"] for t in range(400)]
    below = sum(lr < math.sqrt(1e-5 * 3e-4) for lr in lrs) / len(lrs)
    assert 0.4 < below < 0.6


def test_sampling_is_seeded_and_independent_of_the_number_of_trials():
    space = paper_space("sdtp")
    assert [sample(space, 0, t) for t in range(5)] == [sample(space, 0, t) for t in range(5)]
    assert sample(space, 0, 1) != sample(space, 1, 1)
    assert sample(space, 0, 4) != sample(space, 0, 3)


def test_space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "optim.forward.lr: {log_uniform: [1.0e-4, 1.0e-2]}\ntrain.epochs: 3\n"
        "optim.forward.beta2: {choice: [0.9, 0.99]}\n"
    )
    space = load_space(str(path), "bp")
    v = sample(space, 0, 0)
    assert v["train.epochs"] == 3 and 1e-4 <= v["optim.forward.lr"] <= 1e-2


@pytest.mark.parametrize(
    "text,message",
    [
        ("optim.forward.lr: {loguniform: [1, 2]}\n", "a distribution is one of"),
        ("optim.forward.lr: {uniform: [2, 1]}\n", "needs low < high"),
        ("optim.forward.lr: {log_uniform: [0, 1]}\n", "needs low > 0"),
        ("[1, 2]\n", "non-empty mapping"),
    ],
)
def test_bad_space_files(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_space(str(path), "bp")


def test_missing_space_file_says_what_to_pass(tmp_path):
    with pytest.raises(ConfigError, match="use 'paper' or a YAML file"):
        load_space(str(tmp_path / "nope.yaml"), "bp")
