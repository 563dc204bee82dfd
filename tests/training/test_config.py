"""training.config: layering defaults <- YAML (inherit) <- overrides, strict keys
and types, range checks, round trips, and the --help-config rendering."""

import dataclasses

import pytest

from bioscale.training.config import ConfigError, DistributedConfig, ExperimentConfig
from bioscale.training.config_loader import config_from_dict, describe, load_config, parse_override


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_without_file():
    cfg = load_config(None, [])
    assert cfg == ExperimentConfig()
    assert cfg.train.eval_splits == ["val", "test"] and cfg.algorithm.rule == "sdtp"
    assert cfg.optim.forward.lr == 1e-4 and cfg.distributed == DistributedConfig()


def test_layers_inherit_and_override(tmp_path):
    (tmp_path / "family").mkdir()
    write(
        tmp_path / "family" / "base.yaml",
        """
model: {arch: cifar_lc}
train: {epochs: 5, keep_checkpoints: 2}
optim:
  forward: {lr: 3e-4, beta2: 0.99}
""",
    )
    write(tmp_path / "family" / "extra.yaml", "train: {epochs: 7}\n")
    exp = write(
        tmp_path / "exp.yaml",
        """
inherit: [family/base.yaml, family/extra.yaml]
name: cifar_sdtp
optim: {forward: {eps: 1}}   # an int is accepted for a float
data:
""",
    )
    cfg = load_config(exp, ["train.keep_checkpoints=4", "optim.inverse={lr: 1e-5}"])
    assert cfg.name == "cifar_sdtp" and cfg.model.arch == "cifar_lc"
    assert cfg.train.epochs == 7  # later parent wins over earlier
    assert cfg.train.keep_checkpoints == 4  # override wins over the file
    assert cfg.optim.forward.lr == 3e-4 and isinstance(cfg.optim.forward.lr, float)
    assert cfg.optim.forward.beta2 == 0.99 and cfg.optim.forward.eps == 1.0
    assert isinstance(cfg.optim.forward.eps, float)
    assert cfg.optim.inverse.lr == 1e-5 and cfg.optim.inverse.beta2 == 0.999  # merged, not replaced
    assert cfg.data == ExperimentConfig().data  # `data:` with nothing under it


@pytest.mark.parametrize(
    "override, check",
    [
        ("train.eval_splits=[test]", lambda c: c.train.eval_splits == ["test"]),
        ("data.path=null", lambda c: c.data.path is None),
        ("data.path=/data/fmnist", lambda c: c.data.path == "/data/fmnist"),
        ("name=123", lambda c: c.name == "123"),  # a str field keeps the raw text
        ("data.augment=no", lambda c: c.data.augment == "no"),  # not YAML 1.1's False
        ("algorithm.sigma=0.5", lambda c: c.algorithm.sigma == 0.5),
        ("algorithm.alpha=1e-3", lambda c: c.algorithm.alpha == 1e-3),
        ("train.max_steps_per_epoch=20", lambda c: c.train.max_steps_per_epoch == 20),
    ],
)
def test_override_values(override, check):
    assert check(load_config(None, [override]))


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("train.epoch=3", ["override 'train.epoch=3'", "unknown config key 'train.epoch'", "train.epochs"]),
        ("epochs=3", ["unknown config key 'epochs'", "train.epochs"]),
        ("tran={epochs: 3}", ["unknown config key 'tran.epochs'", "train.epochs"]),
        ("modle=1", ["unknown config key 'modle'", "model"]),
        ("trian.epochs=3", ["'trian.epochs'", "train.epochs"]),
        ("optim.forward.learning_rate=1", ["'optim.forward.learning_rate'", "optim.forward.lr"]),
        ("train.epochs=3.5", ["train.epochs: expected int, got float 3.5"]),
        ("train.epochs=true", ["train.epochs: expected int, got bool"]),
        ("train.epochs=null", ["train.epochs: expected int, got NoneType"]),
        ("optim.forward.lr=fast", ["optim.forward.lr: expected float, got str 'fast'"]),
        ("train.eval_splits=[1]", ["train.eval_splits[0]: expected str, got int"]),
        ("train=3", ["section 'train' must be a mapping"]),
        ("train.epochs", ["expected key=value"]),
        ("train..epochs=1", ["expected key=value"]),
        ("data.batch_size_per_rank=0", ["data.batch_size_per_rank = 0: must be >= 1"]),
        ("data.eval_batch_size_per_rank=-1", ["must be >= 1 or null"]),
        ("data.reader=wsd", ["data.reader = 'wsd'", "did you mean 'wds'"]),
        ("distributed.backend=horovod", ["distributed.backend", "none, ddp, deepspeed"]),
        ("distributed.precision=fp16", ["distributed.precision", "fp32, bf16"]),
        ("distributed.zero_stage=2", ["ZeRO needs distributed.backend=deepspeed"]),
        ("model.dtype=float16", ["model.dtype", "float32, float64, bfloat16"]),
        ("algorithm.rule=sdpt", ["algorithm.rule = 'sdpt'", "did you mean 'sdtp'"]),
        ("optim.inverse.beta2=1.0", ["optim.inverse.beta2", "[0, 1)"]),
        ("optim.forward.lr=0", ["optim.forward.lr = 0.0: must be > 0"]),
        ("train.eval_splits=[val, val]", ["train.eval_splits", "distinct"]),
        ("train.keep_checkpoints=0", ["train.keep_checkpoints"]),
        ("name=' '", ["name", "must not be empty"]),
    ],
)
def test_bad_overrides_name_the_key(override, fragments):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_cross_field_checks_pass_when_consistent():
    cfg = load_config(
        None,
        [
            "distributed.backend=deepspeed",
            "distributed.zero_stage=3",
            "distributed.precision=bf16",
            "distributed.device=cuda",
        ],
    )
    assert (cfg.distributed.zero_stage, cfg.distributed.precision) == (3, "bf16")
    with pytest.raises(ConfigError, match="DeepSpeed cannot reduce float64"):
        load_config(None, ["distributed.backend=deepspeed", "model.dtype=float64"])
    # bf16 runs on CPU too (CPU autocast), but only over float32 weights
    assert load_config(None, ["distributed.precision=bf16", "distributed.device=cpu"]).distributed.precision == "bf16"
    with pytest.raises(ConfigError, match="use model.dtype=float32"):
        load_config(None, ["distributed.precision=bf16", "model.dtype=float64"])


def test_file_errors_name_the_file_that_set_the_key(tmp_path):
    base = write(tmp_path / "base.yaml", "train: {epochs: 5, batch: 3}\n")
    child = write(tmp_path / "child.yaml", "inherit: base.yaml\n")
    with pytest.raises(ConfigError, match=rf"{base}: unknown config key 'train.batch'"):
        load_config(child, [])
    bad_type = write(tmp_path / "bad_type.yaml", "data: {num_workers: two}\n")
    with pytest.raises(ConfigError, match=rf"{bad_type}: data.num_workers: expected int, got str 'two'"):
        load_config(bad_type, [])
    bad_range = write(tmp_path / "bad_range.yaml", "train: {selection_window: 0}\n")
    with pytest.raises(ConfigError, match=rf"{bad_range}: train.selection_window = 0"):
        load_config(bad_range, [])
    # the file is blamed even when an override supplies the other half of a conflict
    zero = write(tmp_path / "zero.yaml", "distributed: {backend: deepspeed, zero_stage: 2}\n")
    with pytest.raises(ConfigError, match=rf"{zero}: distributed.zero_stage = 2.*override 'distributed.backend=ddp'"):
        load_config(zero, ["distributed.backend=ddp"])


@pytest.mark.parametrize(
    "files, match",
    [
        ({"a.yaml": "inherit: b.yaml\n", "b.yaml": "inherit: a.yaml\n"}, "inherit: cycle"),
        ({"a.yaml": "inherit: missing.yaml\n"}, "a.yaml: inherit: cannot read config file .*missing.yaml"),
        ({"a.yaml": "inherit: {x: 1}\n"}, "inherit must be a file name or a list"),
        ({"a.yaml": "train: [epochs\n"}, "a.yaml: not valid YAML"),
        ({"a.yaml": "- 1\n- 2\n"}, "a.yaml: the top level must be a mapping"),
    ],
)
def test_bad_files(tmp_path, files, match):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "a.yaml", [])


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read config file /nonexistent/x.yaml"):
        load_config("/nonexistent/x.yaml", [])


def test_round_trips(tmp_path):
    cfg = load_config(
        None,
        [
            "name=rt",
            "algorithm.rule=dtp",
            "algorithm.alpha=0.05",
            "train.eval_splits=[val]",
            "optim.forward.lr=2.5e-4",
            "data.path=/d",
        ],
    )
    cfg.save_yaml(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", []) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict({"train": {"epochs": 2}}).train.epochs == 2
    with pytest.raises(ConfigError, match="checkpoint: unknown config key 'model.depth'"):
        config_from_dict({"model": {"depth": 3}}, source="checkpoint")


def test_parse_override_nests_the_dotted_key():
    assert parse_override("optim.forward.lr=1e-3") == (
        {"optim": {"forward": {"lr": 1e-3}}},
        "override 'optim.forward.lr=1e-3'",
    )


def test_describe_documents_every_field():
    text = describe()
    assert "(undocumented)" not in text
    assert "train.epochs: int = 10\n    Number of training epochs." in text
    assert "data.eval_batch_size_per_rank: int | None = None" in text
    assert "train.eval_splits: list[str] = ['val', 'test']" in text
    assert "[optim.inverse]" in text and "optim.inverse.beta2: float = 0.999" in text
    leaves = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith((" ", "["))]
    assert len(leaves) == len(set(leaves))
    assert {"name", "algorithm.rule", "optim.forward.lr", "distributed.device"} <= set(leaves)
    assert all(f.name in text for f in dataclasses.fields(ExperimentConfig))
