"""The native CPU kernel of the fused hybrid branches (which ``GeM`` and ``AttentionPool`` on their own also take)
and of log-sum-exp pooling (``native.c``): built with the system's C compiler on first use, cached, and called
through :mod:`ctypes` on float32 CPU tensors. The functions here are plain calls, without autograd: the torch ops
of :mod:`.ops` wrap them.

Why native: on a CPU, GeM's per-element ``log`` and ``exp`` are where a hybrid pool's time goes, and torch runs each
as its own pass over memory with a full-size temporary. The C kernel reads each row of ``x`` once into the L1 cache
and does everything there, with ``log2`` / ``exp2`` as short polynomials that the compiler vectorises.

- Build: ``$CC`` (default ``cc``) with ``-O3 -march=native``, about a second, into ``$HYBRIDPOOL_NATIVE_DIR`` (default
  ``$XDG_CACHE_HOME/hybridpool/native``, else ``~/.cache/hybridpool/native``), under a name that hashes the
  source, the flags and the CPU's feature flags; concurrent processes (a parallel sweep) write it atomically.
- Off switch: ``HYBRIDPOOL_NATIVE=0``. Without a compiler, or when the build fails, one warning says so and the
  layers use the torch path (:mod:`.reference`, ``torch.logsumexp``), which gives the same values more
  slowly.
- Threads: the batch is split over ``torch.get_num_threads()`` OpenMP threads. The library links ``libgomp.so.1``,
  the runtime that torch's wheels load under that name, so the kernel shares torch's thread pool.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("native.c")
# -fno-trapping-math lets the compiler vectorise the branch-free selects of the polynomial log2 / exp2
_FLAGS = ("-O3", "-march=native", "-std=gnu11", "-fopenmp", "-fno-trapping-math", "-fPIC", "-shared")
_ptr = ctypes.c_void_p
_i64 = ctypes.c_int64


def _cpu_flags() -> str:
    """The CPU's feature flags (``-march=native`` depends on them), or the machine name where they are unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _cache_dir() -> Path:
    if os.environ.get("HYBRIDPOOL_NATIVE_DIR"):
        return Path(os.environ["HYBRIDPOOL_NATIVE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hybridpool" / "native"


def _build(compiler: str, target: Path) -> None:
    """Compile ``native.c`` into ``target`` (written under a temporary name, then renamed: atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, built on first use; ``None`` (after one warning) when it cannot be built or is
    switched off with ``HYBRIDPOOL_NATIVE=0``."""
    if os.environ.get("HYBRIDPOOL_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    try:
        if compiler is None:
            raise RuntimeError(f"no C compiler {os.environ.get('CC', 'cc')!r} on PATH (set CC, or install gcc)")
        key = hashlib.sha256(b"\0".join(s.encode() for s in (_SOURCE.read_text(), *_FLAGS, compiler, _cpu_flags())))
        target = _cache_dir() / f"hybridpool_native_{key.hexdigest()[:16]}.so"
        if not target.is_file():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(
            f"hybridpool: the native CPU kernel of the hybrid pool is not available ({err}); float32 CPU inputs use "
            f"the torch path, which gives the same values more slowly. HYBRIDPOOL_NATIVE=0 silences this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    f32 = ctypes.c_float
    i32 = ctypes.c_int
    lib.hp_forward.argtypes = [i32, _ptr, _i64, _i64, _i64, _ptr, _i64, _ptr, _i64, f32, f32, _ptr, _i64, *[_ptr] * 6]
    lib.hp_backward.argtypes = [i32, _ptr, _i64, _i64, _i64, *[_ptr] * 5, _i64, f32, f32, *[_ptr] * 3, _i64]
    lib.hp_backward.argtypes += [_ptr] * 3
    lib.hp_forward.restype = lib.hp_backward.restype = None
    lib.hp_lse_forward.argtypes = [i32, _ptr, _i64, _i64, _i64, _ptr, _i64, *[_ptr] * 4]
    lib.hp_lse_backward.argtypes = [i32, _ptr, _i64, _i64, _i64, _ptr, _i64, *[_ptr] * 4]
    lib.hp_lse_forward.restype = lib.hp_lse_backward.restype = None
    return lib


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the library loads (:func:`library`). Under ``torch.compile`` this is read once, while tracing, and
    kept as a constant of the graph: whether a float32 CPU pool calls the kernel's op or the reference maths."""
    return library() is not None


def _threads(b: int) -> int:
    """OpenMP threads for a batch of ``b`` samples: torch's intra-op thread count, at most one per sample."""
    return max(1, min(b, torch.get_num_threads()))


def _addr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _kernel_layout(x: torch.Tensor) -> bool:
    """Whether ``x`` is what the kernel reads: a contiguous float32 CPU tensor ``(B, C, N)``."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 3 and x.is_contiguous()


def supports(x: torch.Tensor, p: torch.Tensor, eps: float, branches: tuple[bool, bool, bool, bool]) -> bool:
    """Whether the native kernel takes this call: contiguous float32 CPU ``x`` ``(B, C, N)``, and for GeM ``eps > 0``
    and every ``p >= 1`` (then ``u^p`` and ``u^(p-1)`` lie in ``(0, 1]``); the library loads (built on first use)."""
    if not _kernel_layout(x):
        return False
    if branches[2] and (eps <= 0 or bool((p < 1).any())):
        return False
    return available()


def native_forward(
    x: torch.Tensor,
    p: torch.Tensor,
    weight: torch.Tensor,
    log_temperature: torch.Tensor,
    eps: float,
    branches: tuple[bool, bool, bool, bool],
    need_p_grad: bool = False,
    exact_avg: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`.reference.branch_forward` in the native kernel (float32, contiguous ``x`` ``(B, C, N)``); same returns.

    ``exact_avg``: the average from torch's ``mean`` (one more pass over ``x``), bit for bit ``x.mean(2)``; the
    kernel's own sum adds in another order and can differ in the last bit.
    """
    if not _kernel_layout(x):
        raise ValueError(
            f"the native kernel takes a contiguous float32 CPU tensor (B, C, N); got {x.dtype} {tuple(x.shape)} on "
            f"{x.device} (contiguous: {x.is_contiguous()})"
        )
    _, use_max, use_gem, use_attn = branches
    b, c, n = x.shape
    slots, k = [], 0
    for on in branches:
        slots.append(k if on else -1)
        k += on
    slots_c = (ctypes.c_int32 * 4)(-1 if exact_avg else slots[0], *slots[1:])
    descriptors = x.new_empty(b, k, c)
    saved: dict[str, torch.Tensor] = {}
    peak = x.new_empty(b, c) if use_max or use_gem else None
    s = x.new_empty(b, c) if use_gem else None
    t = x.new_empty(b, c) if use_gem and need_p_grad else None
    p_c = p.detach().contiguous()
    p_abs_max = 0.0  # max over channels of max(|p|, |p - 1|): max p, since p >= 1
    if use_gem:
        p_min, p_abs_max = (float(v) for v in torch.aminmax(p_c))
        if eps <= 0 or p_min < 1:
            raise ValueError(f"the native kernel's GeM needs eps > 0 and p >= 1; got eps={eps}, min p={p_min}")
    attn = logits = scaled_w = None
    heads = 1
    if use_attn:
        heads = weight.shape[0]
        scaled_w = (weight.detach() * torch.exp(-log_temperature.detach())).contiguous()  # (heads, C): logits / T
        logits, attn = x.new_empty(b, heads, n), x.new_empty(b, heads, n)
    library().hp_forward(
        _threads(b), x.data_ptr(), b, c, n, slots_c, k, _addr(p_c if use_gem else None), int(p_c.dim() > 0),
        p_abs_max, eps, _addr(scaled_w), heads, descriptors.data_ptr(), _addr(peak), _addr(s), _addr(t),
        _addr(logits), _addr(attn),
    )  # fmt: skip
    if branches[0] and exact_avg:
        descriptors[:, slots[0]] = x.mean(2)
    if peak is not None:
        saved["peak"] = peak
    if use_gem:
        saved.update(s=s, y=descriptors[:, slots[2]])
        if t is not None:
            saved["t"] = t
    if use_attn:
        saved.update(attn=attn, logits=logits)
    return descriptors, (attn if use_attn else x.new_empty(0)), saved


def native_backward(
    x: torch.Tensor,
    p: torch.Tensor,
    scaled_weight: torch.Tensor,
    peak: torch.Tensor,
    attn: torch.Tensor,
    grad_descriptors: torch.Tensor,
    gem_coef: torch.Tensor,
    eps: float,
    branches: tuple[bool, bool, bool, bool],
    need_x: bool,
    need_w: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`.blocked.blocked_backward` in the native kernel: same arguments and returns (``x`` float32, contiguous
    ``(B, C, N)``; GeM's ``p >= 1`` and ``eps > 0``). Recomputes GeM's ``u^(p-1)`` and the max branch's ties row by
    row and writes the input gradient once."""
    _, _, use_gem, use_attn = branches
    b, c, n = x.shape
    kinds = [kind for kind, on in zip(("avg", "max", "gem", "attn"), branches, strict=True) if on]
    grads = {kind: g.contiguous() for kind, g in zip(kinds, grad_descriptors.unbind(1), strict=True)}  # (B, C) rows
    need_w = need_w and use_attn
    heads, d_logits, grad_w_rows = 1, None, None
    if use_attn:
        heads = scaled_weight.shape[0]
        d_logits = x.new_empty(b, heads, n)
        grad_w_rows = x.new_empty(b, heads, c) if need_w else None
    grad_x = torch.empty_like(x) if need_x else None
    coef = gem_coef.contiguous() if use_gem and need_x else None
    p_c = p.detach().contiguous()
    p_abs_max = float(p_c.max()) if coef is not None else 0.0  # p >= 1
    peak_c = peak.contiguous() if branches[1] or use_gem else None
    attn_c = attn.contiguous() if use_attn else None
    w_c = scaled_weight.detach().contiguous() if use_attn else None
    library().hp_backward(
        _threads(b), x.data_ptr(), b, c, n, _addr(grads.get("avg") if need_x else None),
        _addr(grads.get("max") if need_x else None), _addr(peak_c), _addr(coef),
        _addr(p_c if coef is not None else None), int(p_c.dim() > 0), p_abs_max, eps, _addr(grads.get("attn")),
        _addr(attn_c), _addr(w_c), heads, _addr(d_logits), _addr(grad_w_rows), _addr(grad_x),
    )  # fmt: skip
    return (
        grad_x if grad_x is not None else x.new_empty(0),
        d_logits if d_logits is not None else x.new_empty(0),
        grad_w_rows.sum(0) if grad_w_rows is not None else x.new_empty(0),
    )


def lse_supports(x: torch.Tensor, r: torch.Tensor) -> bool:
    """Whether the kernel's log-sum-exp takes this call: contiguous float32 CPU ``x`` ``(B, C, N)``, ``r > 0`` scalar
    or ``(C,)`` float32 (the kernel shifts each row by its max, which bounds ``exp(r x)`` for ``r > 0`` only), and
    the library loads."""
    if not _kernel_layout(x):
        return False
    if r.dtype != torch.float32 or r.device.type != "cpu" or r.dim() > 1 or (r.dim() == 1 and r.numel() != x.shape[1]):
        return False
    if bool((r <= 0).any()):
        return False
    return available()


def lse_forward(x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-sum-exp pooling ``(1/r) log(mean_n exp(r x))`` in the kernel: ``x`` ``(B, C, N)`` float32, ``r`` ``()`` or
    ``(C,)`` (:func:`lse_supports`). Returns ``(y, weighted_mean, peak, total)``, all ``(B, C)``: the pooled value,
    the mean of ``x`` under the softmax weights of ``r x`` (``dy/dr = (weighted_mean - y) / r``), and each row's max
    and sum of ``exp(r (x - max))``, which :func:`lse_backward` reads."""
    b, c, n = x.shape
    r_c = r.detach().contiguous()
    y, weighted_mean, peak, total = (x.new_empty(b, c) for _ in range(4))
    library().hp_lse_forward(
        _threads(b), x.data_ptr(), b, c, n, r_c.data_ptr(), int(r_c.dim() > 0), y.data_ptr(),
        weighted_mean.data_ptr(), peak.data_ptr(), total.data_ptr(),
    )  # fmt: skip
    return y, weighted_mean, peak, total


def lse_backward(
    x: torch.Tensor, r: torch.Tensor, grad_y: torch.Tensor, peak: torch.Tensor, total: torch.Tensor
) -> torch.Tensor:
    """The input gradient of :func:`lse_forward`, ``grad_y`` times the softmax weights of ``r x``, recomputed row by
    row from the kept ``peak`` and ``total`` (nothing input-sized is kept besides ``x``)."""
    b, c, n = x.shape
    r_c, g = r.detach().contiguous(), grad_y.contiguous()
    grad_x = torch.empty_like(x)
    library().hp_lse_backward(
        _threads(b), x.data_ptr(), b, c, n, r_c.data_ptr(), int(r_c.dim() > 0), g.data_ptr(),
        peak.contiguous().data_ptr(), total.contiguous().data_ptr(), grad_x.data_ptr(),
    )  # fmt: skip
    return grad_x
