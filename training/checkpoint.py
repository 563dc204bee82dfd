"""Checkpoints of a run in `<run>/checkpoints/`, safe against being killed at
any instant.

Layout:
    checkpoints/step_0000001500.pt   torch.save of the loop's state dict
    checkpoints/latest               JSON marker: the kept checkpoints, oldest
                                     first, each with step, size and sha256

Order of a save: write the checkpoint under a temp name, fsync, rename; then
rewrite `latest` the same way; only then delete what fell out of the last k.
So `latest` only ever lists files that were complete when it was written, and
a checkpoint file not listed there (killed between the two renames) is
ignored and cleaned up by the next save. On load the size and sha256 are
checked, so a checkpoint damaged afterwards (truncated copy, bit rot) is
skipped with a warning in favour of the previous one.

Our own checkpoints are loaded with `weights_only=False` (they hold RNG states
and the config as plain Python objects): they come from this run directory and
match the sha256 we recorded. Anything else (`--init-from`) goes through
`load_weights`, which uses `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, cast

import torch

from bioscale.data_pipeline.atomic_files import atomic_open, atomic_write_text, is_temp
from bioscale.data_pipeline.errors import UserError

MARKER = "latest"
_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(UserError, RuntimeError):
    """No usable checkpoint, or a weights file that does not fit the model."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt, incomplete, unlisted)."""


@dataclass(frozen=True)
class CheckpointRecord:
    file: str
    step: int
    size: int
    sha256: str


class _HashingWriter:
    """File wrapper that hashes what torch.save writes, so saving costs no
    second read of a multi-GB file."""

    def __init__(self, f):
        self._f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        n = self._f.write(data)
        self.size += n
        return n

    def flush(self) -> None:
        self._f.flush()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_name(step: int) -> str:
    return f"step_{step:010d}.pt"


class CheckpointManager:
    """Save / resume the training state of one run (call `save` on rank 0 only)."""

    def __init__(self, run_dir: str | Path, keep: int = 3, subdir: str = "checkpoints"):
        """`subdir`: where under the run directory (a pipeline stage keeps its own
        `checkpoints/stage{s}`)."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.dir = Path(run_dir) / subdir
        self.keep = keep
        self.loaded: CheckpointRecord | None = None
        """The checkpoint the last `load_latest` returned."""

    # ------------------------------------------------------------- marker

    def _read_marker(self) -> list[CheckpointRecord] | None:
        """The recorded checkpoints, oldest first; None if the marker is missing or unreadable."""
        path = self.dir / MARKER
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "stages" in data:
                raise CheckpointError(
                    f"{path}: this run directory holds a {len(data['stages'])}-stage pipeline run; resume it with "
                    f"distributed.backend=pipeline distributed.stages={len(data['stages'])}, or use another --out"
                )
            return [CheckpointRecord(**r) for r in data["checkpoints"]]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(
                f"{path}: unreadable checkpoint marker ({exc}); scanning {self.dir} instead",
                CheckpointWarning,
                stacklevel=3,
            )
            return None

    def _write_marker(self, records: list[CheckpointRecord]) -> None:
        data = {"latest": records[-1].file, "step": records[-1].step, "checkpoints": [asdict(r) for r in records]}
        atomic_write_text(self.dir / MARKER, json.dumps(data, indent=1) + "\n")

    def _scan(self) -> list[CheckpointRecord]:
        """Records for the step_*.pt files on disk, oldest first, with no known
        hash (sha256 "") — used when the marker is lost."""
        files = [(int(m[1]), p) for p in self.dir.glob("step_*.pt") if (m := _NAME.match(p.name))]
        return [CheckpointRecord(p.name, step, p.stat().st_size, "") for step, p in sorted(files)]

    def records(self) -> list[CheckpointRecord]:
        """Checkpoints listed in the marker (or found on disk without one), oldest first."""
        records = self._read_marker()
        return self._scan() if records is None else records

    # --------------------------------------------------------------- save

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write `state` as the checkpoint of `step` and make it the latest.
        Checkpoints at or after `step` from an abandoned timeline (a resume from
        an earlier one) are dropped; only the newest `keep` are kept."""
        if not isinstance(state, dict):
            raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / checkpoint_name(step)
        with atomic_open(path, "wb") as f:
            writer = _HashingWriter(f)
            try:
                # torch.save only calls write() and flush() on a file object
                torch.save(state, cast(IO[bytes], writer))
            except RuntimeError as exc:
                # Ctrl-C inside torch.save: its zip writer's cleanup then fails too ("unexpected
                # pos") and hides the interrupt; surface the interrupt (the temp file is dropped)
                if isinstance(exc.__context__, KeyboardInterrupt):
                    raise exc.__context__ from None
                raise
        record = CheckpointRecord(path.name, step, writer.size, writer.sha256.hexdigest())
        kept = [r for r in self.records() if r.step < step][-(self.keep - 1) :] if self.keep > 1 else []
        self._write_marker([*kept, record])
        self._remove_unlisted({r.file for r in (*kept, record)})
        return path

    def _remove_unlisted(self, listed: set[str]) -> None:
        for p in self.dir.iterdir():
            if is_temp(p) or (_NAME.match(p.name) and p.name not in listed):
                p.unlink(missing_ok=True)

    # --------------------------------------------------------------- load

    def _verify(self, record: CheckpointRecord) -> str | None:
        """Why `record`'s file cannot be trusted, or None if it is intact (as far
        as known: a record from a scan has no hash)."""
        path = self.dir / record.file
        if not path.is_file():
            return "file is missing"
        size = path.stat().st_size
        if size != record.size:
            return f"size {size} bytes, expected {record.size} (truncated or partly written)"
        if record.sha256 and _sha256(path) != record.sha256:
            return "sha256 does not match the one recorded at save time (corrupted)"
        return None

    def _candidates(self) -> list[CheckpointRecord]:
        """Records to try, newest first."""
        records = self._read_marker()
        if records is None:
            records = self._scan()
            if records:
                warnings.warn(
                    f"{self.dir}: no usable '{MARKER}' marker; trying checkpoint files by step without integrity check",
                    CheckpointWarning,
                    stacklevel=3,
                )
        elif records:
            newer = [
                p.name
                for p in self.dir.glob("step_*.pt")
                if (m := _NAME.match(p.name)) and int(m[1]) > records[-1].step
            ]
            if newer:
                warnings.warn(
                    f"{self.dir}: ignoring {', '.join(sorted(newer))}: not recorded in "
                    f"'{MARKER}' (its save was interrupted)",
                    CheckpointWarning,
                    stacklevel=3,
                )
        return records[::-1]

    def load_latest(
        self, map_location: str | torch.device = "cpu", at_most: int | None = None
    ) -> dict[str, Any] | None:
        """The newest intact checkpoint's state (of a step <= `at_most`, if given: the
        newest step every pipeline stage has), or None when the run has none.
        A damaged newest checkpoint is skipped with a `CheckpointWarning`;
        if every one is damaged this raises `CheckpointError` rather than
        silently starting the run over."""
        self.loaded = None
        if not self.dir.is_dir():
            return None
        problems = []
        for record in self._candidates():
            if at_most is not None and record.step > at_most:
                continue
            path = self.dir / record.file
            reason = self._verify(record)
            if reason is None:
                try:
                    state = torch.load(path, map_location=map_location, weights_only=False)
                except Exception as exc:  # any unpickling failure means: not usable
                    reason = f"torch.load failed: {type(exc).__name__}: {exc}"
                else:
                    if isinstance(state, dict):
                        self.loaded = record
                        return state
                    reason = f"holds a {type(state).__name__}, not a state dict"
            problems.append(f"{path}: {reason}")
            warnings.warn(
                f"skipping checkpoint {path}: {reason}; falling back to the previous one",
                CheckpointWarning,
                stacklevel=2,
            )
        if problems:
            raise CheckpointError("no usable checkpoint:\n  " + "\n  ".join(problems))
        return None


# ------------------------------------------------------------- pipeline runs


def write_stages_marker(run_dir: str | Path, step: int, stages: int) -> None:
    """`checkpoints/latest` of a pipeline run, written once every stage has saved `step`:
    the step the whole model can resume from and each stage's file (in its own
    `checkpoints/stage{s}/`, whose marker lists that stage's kept checkpoints)."""
    data = {"step": step, "stages": [f"stage{s}/{checkpoint_name(step)}" for s in range(stages)]}
    atomic_write_text(Path(run_dir) / "checkpoints" / MARKER, json.dumps(data, indent=1) + "\n")


def resumable_step(run_dir: str | Path) -> int | None:
    """The step a re-run of this run directory resumes from, from the markers alone (no
    weights read; for log lines): `checkpoints/latest` of any backend but DeepSpeed's."""
    try:
        data = json.loads((Path(run_dir) / "checkpoints" / MARKER).read_text(encoding="utf-8"))
        return int(data["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stored_layout(run_dir: str | Path) -> tuple[str, int] | None:
    """Which engine's checkpoints a run directory holds: ("plain", 0) (backend none or ddp),
    ("deepspeed", 0), ("pipeline", stages), or None when it holds none."""
    top = Path(run_dir) / "checkpoints"
    try:
        data = json.loads((top / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and "stages" in data:
        return "pipeline", len(data["stages"])
    stage_dirs = [d for d in top.glob("stage*") if d.is_dir()]
    if stage_dirs:  # killed before the first all-stage marker
        return "pipeline", len(stage_dirs)
    if (top / "deepspeed").is_dir():
        return "deepspeed", 0
    if data is not None or any(top.glob("step_*.pt")):
        return "plain", 0
    return None


def check_checkpoint_layout(run_dir: str | Path, layout: str, stages: int = 0) -> None:
    """Refuse to resume from a run directory holding another engine's checkpoints (it would
    start over beside them, or misread them): `layout` is what this run writes — "plain",
    "deepspeed", or "pipeline" with `stages` stages."""
    found = stored_layout(run_dir)
    if found is None or found == (layout, stages):
        return
    top = Path(run_dir) / "checkpoints"
    kind, n = found
    if kind == "pipeline" and layout == "pipeline":
        reason = f"a {n}-stage pipeline run, now distributed.stages = {stages}; resume with the same stages"
    elif kind == "pipeline":
        reason = (
            f"this run directory holds a {n}-stage pipeline run; resume it with "
            f"distributed.backend=pipeline distributed.stages={n}"
        )
    elif kind == "deepspeed":
        reason = "holds DeepSpeed checkpoints (checkpoints/deepspeed); resume it with distributed.backend=deepspeed"
    elif layout == "pipeline":
        reason = "holds checkpoints of a run without the pipeline; resume it with its own distributed.backend"
    else:
        reason = "holds checkpoints of a run without DeepSpeed; resume it with distributed.backend=none or ddp"
    raise CheckpointError(f"{top}: {reason}, or use another --out")


# ------------------------------------------------------------- foreign weights


def load_weights(path: str | Path, key: str = "model") -> dict[str, torch.Tensor]:
    """Model weights for `--init-from`: a plain state dict, or the `key` entry
    of a checkpoint holding one. Loaded with `weights_only=True` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not loadable as plain weights (torch.load weights_only=True): {first}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path}: expected a state dict of tensors (or a dict with a {key!r} entry), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors; not a state dict")
    return dict(obj)


def check_compatible(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise `CheckpointError` naming every missing, unexpected and mis-shaped
    tensor when `found` (from `source`) does not fit a model whose state dict is
    `expected` — e.g. a checkpoint of another architecture."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: {tuple(found[k].shape)} in file, {tuple(v.shape)} in model"
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{name} ({len(items)}): {', '.join(items[:6])}{', ...' if len(items) > 6 else ''}"
            for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
            if items
        ]
        raise CheckpointError(f"{source}: does not fit this model (another architecture?) — " + "; ".join(parts))
