"""The LC layers' register-tiled CPU kernels (`lc_native.cpp`): built on first use, called by `lc_ops`.

Why our own kernels: PyTorch has no locally-connected GEMM, and the best an eager
composition of BLAS calls reaches here is ~40-55 GFLOP/s for this shape (O = 16 outputs
per position), plus the gather of each position's inputs; these keep an output tile in
registers across all taps and read the input in place (BENCHMARKS.md, "Training step cost
on CPU", round 6).

Build. Plain C++17 with no PyTorch headers (so it compiles in ~2 s), by the C++ compiler on
PATH, with `-march=native`, into `~/.cache/bioscale/lc_native/`, keyed by the source, the
compiler, the flags and this CPU's feature flags (a home directory shared by unlike nodes
gets one library per CPU kind). Written to a temporary name and renamed, so concurrent
processes never load a half-written file. Loaded with ctypes (which releases the GIL
around each call). Without a compiler, or if the build fails, `lc_ops` keeps its
PyTorch kernels and this says why once in the log.

Used for contiguous float32/float64 CPU tensors (`usable`); bf16 and CUDA stay on PyTorch.
`disabled()` switches it off (tests of the PyTorch kernels, `bioscale bench train
--compare-lc-kernels`, `bioscale bench layers`).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("lc_native.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
# GCC tuned for AMD Zen (-march=native there) leaves a lone multiply-add chain unfused
# (`avoid-fma-max-bits`), so a tile's edge rows would round differently from its body and
# from an Intel build: fused everywhere, every output number is the same sum on every CPU kind.
GCC_FLAGS = ("--param=avoid-fma-max-bits=0",)
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}

_P, _I64, _DIMS = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)
_SIGNATURES = {  # the C ABI at the end of lc_native.cpp; the last int is the thread count
    "lc_forward": [_P, _P, _P, _P, _DIMS, ctypes.c_int],
    "lc_adjoint": [_P, _P, _P, _P, _DIMS, ctypes.c_int, ctypes.c_int],
    "lc_weight_grad": [_P, _P, _P, _DIMS, ctypes.c_int],
    "lc_to_hnwc": [_P, _P, _I64, _I64, _I64, ctypes.c_int],
}

_state: dict[str, object] = {"lib": None, "tried": False, "enabled": True, "path": None, "error": None}


def _cpu_key() -> str:
    """The CPU's model and feature flags (Linux), so `-march=native` builds are never shared across CPU kinds."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.uname().machine
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _build(cache: Path) -> Path:
    """Compile the source into `cache` (if not there already) and return the library's path."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler on PATH (apt-get install g++)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    flags = FLAGS if "clang" in version.lower() else FLAGS + GCC_FLAGS
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), version, *flags, _cpu_key()]).encode()).hexdigest()[:16]
    lib = cache / f"lc_native-{digest}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{compiler} failed on {SOURCE}: {done.stderr.strip()[-500:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on the first call; None if they cannot be built."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            path = _build(Path.home() / ".cache" / "bioscale" / "lc_native")
            lib = ctypes.CDLL(str(path))
            _state["path"] = str(path)
            for name, argtypes in _SIGNATURES.items():
                for suffix in _DTYPES.values():
                    fn = getattr(lib, f"{name}_{suffix}")
                    fn.restype, fn.argtypes = None, argtypes
            _state["lib"] = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _state["error"] = str(err)
            log.warning("LC layers use the PyTorch kernels: the native ones did not build (%s)", err)
    return _state["lib"]  # type: ignore[return-value]


def describe() -> tuple[bool, str]:
    """(built, where it was loaded from or why it did not build), building it if not tried yet."""
    if library() is None:
        return False, f"not built: {_state['error']}"
    return True, str(_state["path"])


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the native kernels take these operands: enabled, built, CPU, float32/64."""
    t = tensors[0]
    if not _state["enabled"] or t.device.type != "cpu" or t.dtype not in _DTYPES:
        return False
    if any(u.dtype != t.dtype or u.device != t.device for u in tensors[1:]):
        return False
    return library() is not None


def takes_weight_grad(grad: torch.Tensor, x: torch.Tensor, g) -> bool:
    """Whether `weight_grad` pays for this layer: its vectors run along one kernel row's kw·C
    inputs, so a layer with few input channels (kw·C under two 64-byte vectors, e.g. 3 for a
    grey first layer) is 2-3× slower than the PyTorch kernels there (BENCHMARKS.md, round 6)."""
    return usable(grad, x) and g.kernel_size[1] * x.shape[2] * x.element_size() >= 128


@contextmanager
def disabled() -> Iterator[None]:
    """Run the block on the PyTorch kernels."""
    before = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = before


def _dims(g, channels: int, n: int, out_channels: int):
    (h, w), (ho, wo), (kh, kw), (sh, sw) = g.input_size, g.output_size, g.kernel_size, g.stride
    return (ctypes.c_int64 * 13)(h, w, channels, n, ho, wo, out_channels, kh, kw, sh, sw, g.pad_h[0], g.pad_w[0])


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def forward(weight: torch.Tensor, x: torch.Tensor, g, bias_lo: torch.Tensor | None = None) -> torch.Tensor:
    """W · unfold(x) + bias: (L, O, K), (H, W, C, N), bias (L, O) -> (L, O, N)."""
    num_pos, o, _ = weight.shape
    c, n = x.shape[2:]
    weight, x = weight.contiguous(), x.contiguous()
    bias_lo = None if bias_lo is None else bias_lo.contiguous()
    out = x.new_empty((num_pos, o, n))
    fn = getattr(library(), f"lc_forward_{_DTYPES[x.dtype]}")
    fn(_ptr(x), _ptr(weight), _ptr(bias_lo), _ptr(out), _dims(g, c, n, o), torch.get_num_threads())
    return out


def adjoint(
    weight: torch.Tensor,
    y: torch.Tensor,
    g,
    channels: int,
    out: torch.Tensor | None = None,
    bias_hwc: torch.Tensor | None = None,
) -> torch.Tensor:
    """fold(Wᵀ · y) (+ bias as (H, W, C)): (L, O, K), (L, O, N) -> (H, W, C, N), added to
    `out` when given (contiguous)."""
    o, n = weight.shape[1], y.shape[-1]
    weight, y = weight.contiguous(), y.contiguous()
    bias_hwc = None if bias_hwc is None else bias_hwc.contiguous()
    accumulate = out is not None
    if out is None:
        out = y.new_empty((*g.input_size, channels, n))
    assert out.is_contiguous(), "the adjoint accumulates into a contiguous (H, W, C, N) tensor"
    fn = getattr(library(), f"lc_adjoint_{_DTYPES[y.dtype]}")
    fn(
        _ptr(weight),
        _ptr(y),
        _ptr(bias_hwc),
        _ptr(out),
        _dims(g, channels, n, o),
        int(accumulate),
        torch.get_num_threads(),
    )
    return out


def weight_grad(grad: torch.Tensor, x: torch.Tensor, g) -> torch.Tensor:
    """grad · unfold(x)ᵀ: (L, O, N), (H, W, C, N) -> (L, O, K).

    The kernel reads x as (H, N, W, C) (one sample's kw·C inputs of a kernel row
    contiguous, in K order): one transposing copy of x per call (in-register blocks, 1.3-1.7×
    faster than PyTorch's permute copy), (k/s)² smaller than the columns."""
    num_pos, o, n = grad.shape
    h, w, c = x.shape[:3]
    lib, suffix, threads = library(), _DTYPES[x.dtype], torch.get_num_threads()
    x, grad = x.contiguous(), grad.contiguous()
    xt = x.new_empty((h, n, w, c))
    getattr(lib, f"lc_to_hnwc_{suffix}")(_ptr(x), _ptr(xt), h, w * c, n, threads)
    out = grad.new_empty((num_pos, o, g.kernel_size[0] * g.kernel_size[1] * c))
    getattr(lib, f"lc_weight_grad_{suffix}")(_ptr(grad), _ptr(xt), _ptr(out), _dims(g, c, n, o), threads)
    return out
