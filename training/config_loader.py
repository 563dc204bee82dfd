"""Reading experiment configs: defaults ← experiment YAML (with `inherit:`) ← `key=value`
overrides, every leaf type-checked against the dataclasses of `training/config.py`, every
error one `ConfigError` naming the file (or override) and the full dotted key; and
`describe()`, the field reference behind `bioscale train --help-config`."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from bioscale.algorithms.config import RULES, AdamConfig
from bioscale.data_pipeline.names import READERS
from bioscale.training.config import (
    BACKENDS,
    DEVICES,
    DTYPES,
    EVAL_SPLITS,
    PIPELINE_MODES,
    PRECISIONS,
    SCHEDULES,
    WEIGHT_SHARING,
    ConfigError,
    ExperimentConfig,
)

__all__ = ["build", "config_from_dict", "describe", "load_config", "parse_override", "upgraded_config"]


# ---------------------------------------------------------------- YAML parsing


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float: YAML 1.1 (PyYAML) requires a dot
    and would hand learning rates written the usual way over as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _yaml_load(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


# ------------------------------------------------------------------ the schema


def _hints(cls: type) -> dict[str, Any]:
    # The modules use `from __future__ import annotations`: resolve the strings.
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        keys += _leaf_keys(tp, f"{prefix}{f.name}.") if _is_section(tp) else [prefix + f.name]
    return keys


def _type_name(tp: Any) -> str:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, key: str, source: str) -> Any:
    """Return `value` checked against the annotation (ints widened to float)."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _check_value(value, options[0], key, source)
    elif typing.get_origin(tp) is list:
        if isinstance(value, list):
            return [_check_value(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"config field {key} has an unsupported annotation {tp!r}")
    raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _first_leaf(key: str, value: Any) -> str:
    """`trian: {epochs: 3}` is reported as 'trian.epochs', the key the user meant."""
    while isinstance(value, dict) and value:
        sub, value = next(iter(value.items()))
        key = f"{key}.{sub}"
    return key


def _unknown_key(key: str, source: str) -> ConfigError:
    known = _leaf_keys(ExperimentConfig)
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    # a right name in the wrong section (`epochs=3` for `train.epochs=3`)
    close += [k for k in known if k.rsplit(".", 1)[-1] == leaf and k not in close]
    if not close:  # perhaps only the section is misspelt
        close = difflib.get_close_matches(key.split(".")[0], sorted({k.split(".")[0] for k in known}), n=2)
    hint = f"; did you mean {', '.join(close[:4])}?" if close else ""
    return ConfigError(f"{source}: unknown config key {key!r}{hint} (`bioscale train --help-config` lists all)")


def _apply(tree: dict, sources: dict, data: Any, source: str, cls: type, prefix: str = "") -> None:
    """Merge `data` (from `source`) into the nested dict `tree`, checking keys and
    leaf types against dataclass `cls`; record which source set each leaf."""
    if not isinstance(data, dict):
        where = f"section {prefix[:-1]!r}" if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(data).__name__} {data!r}")
    hints = _hints(cls)
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in hints:
            raise _unknown_key(_first_leaf(str(dotted), value), source)
        tp = hints[key]
        if _is_section(tp):
            # `train:` with every key commented out is null in YAML: an empty section
            _apply(tree.setdefault(key, {}), sources, {} if value is None else value, source, tp, dotted + ".")
        else:
            tree[key] = _check_value(value, tp, dotted, source)
            sources[dotted] = source


def _instantiate(cls: type, tree: dict) -> Any:
    hints = _hints(cls)
    kwargs = {k: (_instantiate(hints[k], v) if _is_section(hints[k]) else v) for k, v in tree.items()}
    return cls(**kwargs)


def build(layers: list[tuple[Any, str]]) -> ExperimentConfig:
    tree: dict = {}
    sources: dict[str, str] = {}
    for data, source in layers:
        _apply(tree, sources, data, source, ExperimentConfig)
    cfg = _instantiate(ExperimentConfig, tree)
    _validate(cfg, sources)
    return cfg


# ------------------------------------------------------------------ validation


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _validate(cfg: ExperimentConfig, sources: dict[str, str]) -> None:
    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{sources.get(key, 'defaults')}: {key} = {_get(cfg, key)!r}: {problem}")

    def choice(key: str, options: tuple) -> None:
        value = _get(cfg, key)
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            fail(key, f"must be one of {', '.join(options)}" + (f" (did you mean {close[0]!r}?)" if close else ""))

    def at_least(key: str, low: int, optional: bool = False) -> None:
        value = _get(cfg, key)
        if not (optional and value is None) and value < low:
            fail(key, f"must be >= {low}" + (" or null" if optional else ""))

    if not cfg.name.strip():
        fail("name", "must not be empty")
    at_least("seed", 0)
    choice("model.dtype", DTYPES)
    choice("model.weight_sharing", WEIGHT_SHARING)
    at_least("model.weight_sharing_every_steps", 1, optional=True)
    at_least("model.weight_sharing_iterations", 1, optional=True)
    if cfg.model.weight_sharing == "none" and cfg.model.weight_sharing_every_steps is not None:
        fail("model.weight_sharing_every_steps", "applies to model.weight_sharing=instant or dynamic only")
    for key in ("weight_sharing_rate", "weight_sharing_iterations"):
        if cfg.model.weight_sharing != "dynamic" and getattr(cfg.model, key) is not None:
            fail(f"model.{key}", "applies to model.weight_sharing=dynamic only")
    rate = cfg.model.weight_sharing_rate
    if rate is not None and not 0 < rate <= 1:
        fail("model.weight_sharing_rate", f"must be in (0, 1], got {rate}")
    choice("algorithm.rule", RULES)
    for side in ("forward", "inverse"):
        adam: AdamConfig = getattr(cfg.optim, side)
        if not adam.lr > 0:
            fail(f"optim.{side}.lr", "must be > 0")
        for beta in ("beta1", "beta2"):
            if not 0 <= getattr(adam, beta) < 1:
                fail(f"optim.{side}.{beta}", "must be in [0, 1)")
        if not adam.eps > 0:
            fail(f"optim.{side}.eps", "must be > 0")
    choice("data.reader", READERS)
    at_least("data.batch_size_per_rank", 1)
    at_least("data.eval_batch_size_per_rank", 1, optional=True)
    at_least("data.num_workers", 0)
    at_least("train.epochs", 1)
    at_least("train.max_steps_per_epoch", 1, optional=True)
    at_least("train.log_every_steps", 1)
    at_least("train.angle_every_steps", 0)
    at_least("train.checkpoint_every_steps", 0)
    at_least("train.keep_checkpoints", 1)
    at_least("train.selection_window", 1)
    bad = [s for s in cfg.train.eval_splits if s not in EVAL_SPLITS]
    if bad or len(set(cfg.train.eval_splits)) != len(cfg.train.eval_splits):
        fail("train.eval_splits", f"must be distinct names among {', '.join(EVAL_SPLITS)}")
    dist = cfg.distributed
    choice("distributed.backend", BACKENDS)
    choice("distributed.precision", PRECISIONS)
    choice("distributed.device", DEVICES)
    if not 0 <= dist.zero_stage <= 3:
        fail("distributed.zero_stage", "must be 0, 1, 2 or 3")
    if dist.zero_stage and dist.backend not in ("deepspeed", "pipeline"):
        fail(
            "distributed.zero_stage",
            f"ZeRO needs distributed.backend=deepspeed (backend is {dist.backend!r}, "
            f"set by {sources.get('distributed.backend', 'defaults')})",
        )
    if dist.backend == "pipeline" and dist.zero_stage not in (0, 3):
        fail("distributed.zero_stage", "with the pipeline: 0 (replicated stages) or 3 (FSDP2 sharding in each stage)")
    if dist.backend == "pipeline" and dist.zero_stage == 3 and cfg.model.weight_sharing != "none":
        fail("model.weight_sharing", "averages whole LC weights; with the pipeline's zero_stage=3 ranks hold shards")
    choice("distributed.schedule", SCHEDULES)
    choice("distributed.pipeline_mode", PIPELINE_MODES)
    at_least("distributed.stages", 1)
    at_least("distributed.micro_batches", 1)
    if dist.stage_boundaries is not None and (
        len(dist.stage_boundaries) != dist.stages or min(dist.stage_boundaries) < 1
    ):
        fail("distributed.stage_boundaries", f"must give each of the {dist.stages} stages >= 1 block")
    if dist.backend == "pipeline":
        if cfg.data.batch_size_per_rank % dist.micro_batches:
            fail(
                "distributed.micro_batches",
                f"must divide data.batch_size_per_rank = {cfg.data.batch_size_per_rank} "
                "(the pipeline's receive buffers have one micro-batch shape)",
            )
        decoupled = dist.pipeline_mode == "decoupled"
        # the library's Schedule1F1B needs M >= S; our own (decoupled) warms up min(S − 1 − s, M)
        if dist.schedule == "1f1b" and dist.micro_batches < dist.stages and not decoupled:
            fail("distributed.micro_batches", f"1f1b needs at least as many micro-batches as stages ({dist.stages})")
        if decoupled and dist.schedule != "1f1b":
            fail("distributed.schedule", "decoupled mode runs the project's own 1F1B schedule: use 1f1b")
        if decoupled and dist.zero_stage:
            fail("distributed.zero_stage", "decoupled mode has no sharded stages (FSDP2 is the sync engine's): use 0")
    if dist.precision == "bf16" and cfg.model.dtype != "float32":
        fail(
            "distributed.precision",
            f"bf16 autocasts float32 weights; model.dtype is {cfg.model.dtype} (autocast leaves float64 "
            "alone, and bfloat16 weights need no autocast): use model.dtype=float32",
        )
    if cfg.model.dtype == "float64" and dist.backend == "deepspeed":
        fail("model.dtype", "DeepSpeed cannot reduce float64 gradients; use float32 or backend none/ddp")


# ----------------------------------------------------------- files, overrides


def _file_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[dict, str]]:
    """The layers of one experiment file: its `inherit:` parents (in order,
    each relative to the inheriting file) before its own keys."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"{chain[-1]}: inherit: cycle {cycle}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        where = f"{chain[-1]}: inherit: " if chain else ""
        raise ConfigError(f"{where}cannot read config file {path}: {exc.strerror}") from None
    data = _yaml_load(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    parents = data.pop("inherit", None)
    parents = [] if parents is None else [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: inherit must be a file name or a list of them, got {parents!r}")
    layers: list[tuple[dict, str]] = []
    for parent in parents:
        layers += _file_layers(path.parent / parent, (*chain, path))
    return layers + [(data, str(path))]


def _field_type(dotted: str) -> Any:
    cls: Any = ExperimentConfig
    for part in dotted.split("."):
        hints = _hints(cls) if _is_section(cls) else {}
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def parse_override(text: str) -> tuple[dict, str]:
    """`train.epochs=3` -> ({'train': {'epochs': 3}}, source). Values are YAML
    (numbers, true/false, null, [lists], {mappings}); a str field keeps the raw
    text, so `name=123` or `data.augment=no` mean what they say."""
    source = f"override {text!r}"
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{source}: expected key=value with a dotted key, e.g. train.epochs=3")
    value = _yaml_load(raw, source)
    tp = _field_type(key)
    str_field = tp is str or set(typing.get_args(tp)) == {str, type(None)}
    if str_field and value is not None and not isinstance(value, str):
        value = raw.strip()
    nested: dict = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested, source


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Build from a (possibly partial) nested dict over the defaults; strict like a YAML file."""
    return build([(data, source)])


def upgraded_config(stored: dict[str, Any], source: str = "<stored config>") -> dict[str, Any]:
    """A config stored by an earlier version as this version reads it: keys added since
    take their defaults, so a run or sweep started before them compares equal and resumes."""
    return config_from_dict(stored, source).to_dict()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Defaults ← experiment file `path` (and what it inherits) ← `overrides`."""
    layers = _file_layers(Path(path)) if path is not None else []
    layers += [parse_override(text) for text in overrides]
    return build(layers)


# ----------------------------------------------------------------- describe


def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal that follows its annotation in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    factory = f.default_factory
    assert callable(factory), f"field {f.name!r} has no default"  # every config field has one
    return factory()


def describe(cls: type = ExperimentConfig, prefix: str = "") -> str:
    """Every field: dotted key, type, default and docstring; sections as headings."""
    lines: list[str] = []
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        doc = docs.get(f.name, "(undocumented)")
        if _is_section(tp):
            lines += ["", f"[{prefix}{f.name}]  {doc}", describe(tp, f"{prefix}{f.name}.")]
        else:
            lines.append(f"{prefix}{f.name}: {_type_name(tp)} = {_default(f)!r}")
            lines += ["    " + line for line in doc.splitlines()]
    return "\n".join(lines).strip("\n") if not prefix else "\n".join(lines)
