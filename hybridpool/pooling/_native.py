"""The native CPU kernel of the fused hybrid branches (which ``GeM`` and ``AttentionPool`` on their own also take)
and of log-sum-exp pooling (``_native.c``): built with the system's C compiler on first use, cached, and called
through :mod:`ctypes` on float32 CPU tensors.

Why native: on a CPU, GeM's per-element ``log`` and ``exp`` are where a hybrid pool's time goes, and torch runs each
as its own pass over memory with a full-size temporary. The C kernel reads each row of ``x`` once into the L1 cache
and does everything there, with ``log2`` / ``exp2`` as short polynomials that the compiler vectorises.

- Build: ``$CC`` (default ``cc``) with ``-O3 -march=native``, about a second, into ``$HYBRIDPOOL_NATIVE_DIR`` (default
  ``$XDG_CACHE_HOME/hybridpool/native``, else ``~/.cache/hybridpool/native``), under a name that hashes the
  source, the flags and the CPU's feature flags; concurrent processes (a parallel sweep) write it atomically.
- Off switch: ``HYBRIDPOOL_NATIVE=0``. Without a compiler, or when the build fails, one warning says so and the
  layers use the torch path (``_fused.BlockedBranches``, ``torch.logsumexp``), which gives the same values more
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

from ._fused import _gem_grad_p, _gem_row_coef, branch_context, save_branch_context

_SOURCE = Path(__file__).with_name("_native.c")
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
    """Compile ``_native.c`` into ``target`` (written under a temporary name, then renamed: atomic)."""
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
    return library() is not None


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
    """:func:`_fused.branch_forward` in the native kernel (float32, contiguous ``x`` ``(B, C, N)``); same returns.

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


class NativeBranches(torch.autograd.Function):
    """:class:`_fused.FusedBranches` in the native kernel: arguments and returns as there (``x`` float32 on a CPU),
    plus ``exact_avg`` (:func:`native_forward`).

    Forward keeps only per-``(B, C)`` and per-``(B, heads, N)`` tensors besides ``x``; backward recomputes GeM's
    ``u^(p-1)`` and the max branch's ties row by row and writes the input gradient once.
    """

    @staticmethod
    def forward(
        ctx, x, p, weight, log_temperature, eps: float, branches: tuple[bool, bool, bool, bool], exact_avg=False
    ):
        descriptors, attn, saved = native_forward(
            x, p, weight, log_temperature, eps, branches, ctx.needs_input_grad[1], exact_avg
        )
        save_branch_context(ctx, (x, p, weight, log_temperature), eps, branches, saved)
        return descriptors, attn

    @staticmethod
    def backward(ctx, grad_out, _grad_attn):
        x, p, weight, log_temperature, saved, grads = branch_context(ctx, grad_out)
        grads = {kind: g.contiguous() for kind, g in grads.items()}  # the kernel reads (B, C) rows
        _, _, use_gem, use_attn = ctx.branches
        need_x, need_p, need_w, need_log_t = ctx.needs_input_grad[:4]
        b, c, n = x.shape
        grad_x = grad_p = grad_w = grad_log_t = None
        coef = None
        if use_gem:
            if need_p:
                grad_p = _gem_grad_p(grads["gem"], saved["y"], saved["s"], saved["t"], p)
            if need_x:
                coef = _gem_row_coef(grads["gem"], saved["s"], p.view(-1) if p.dim() else p, n).contiguous()
        need_attn = use_attn and (need_x or need_w or need_log_t)
        if not (need_x or need_attn):
            return grad_x, grad_p, grad_w, grad_log_t, None, None, None
        heads, d_logits, grad_w_rows, scaled_w = 1, None, None, None
        if use_attn:
            heads = weight.shape[0]
            inv_t = torch.exp(-log_temperature)
            scaled_w = (weight * inv_t).contiguous()
            d_logits = x.new_empty(b, heads, n)
            grad_w_rows = x.new_empty(b, heads, c) if need_w else None
        grad_x = torch.empty_like(x) if need_x else None
        p_c = p.detach().contiguous()
        p_abs_max = float(p_c.max()) if coef is not None else 0.0  # p >= 1
        g_attn = grads.get("attn") if use_attn else None
        library().hp_backward(
            _threads(b), x.data_ptr(), b, c, n, _addr(grads.get("avg") if need_x else None),
            _addr(grads.get("max") if need_x else None), _addr(saved.get("peak")), _addr(coef),
            _addr(p_c if coef is not None else None), int(p_c.dim() > 0), p_abs_max, ctx.eps, _addr(g_attn),
            _addr(saved.get("attn")), _addr(scaled_w), heads, _addr(d_logits), _addr(grad_w_rows), _addr(grad_x),
        )  # fmt: skip
        if use_attn:
            if need_w:
                grad_w = grad_w_rows.sum(0) * inv_t
            if need_log_t:
                grad_log_t = -(d_logits * saved["logits"]).sum()
        return grad_x, grad_p, grad_w, grad_log_t, None, None, None


def lse_supports(x: torch.Tensor, r: torch.Tensor) -> bool:
    """Whether :class:`NativeLSE` takes this call: contiguous float32 CPU ``x`` ``(B, C, N)``, ``r > 0`` scalar or
    ``(C,)`` float32 (the kernel shifts each row by its max, which bounds ``exp(r x)`` for ``r > 0`` only), eager,
    and the library loads."""
    if not _kernel_layout(x):
        return False
    if r.dtype != torch.float32 or r.device.type != "cpu" or r.dim() > 1 or (r.dim() == 1 and r.numel() != x.shape[1]):
        return False
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or bool((r <= 0).any()):
        return False
    return library() is not None


class NativeLSE(torch.autograd.Function):
    """Log-sum-exp pooling ``(1/r) log(mean_n exp(r x))`` in the native kernel: ``x`` ``(B, C, N)`` float32 on a
    CPU, ``r`` ``()`` or ``(C,)`` -> ``(B, C)``. Backward recomputes the softmax weights of ``r x`` row by row
    (nothing input-sized is kept besides ``x``); ``dy/dr = (mean of x under those weights - y) / r``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        r_c = r.detach().contiguous()
        y, weighted_mean, peak, total = (x.new_empty(b, c) for _ in range(4))
        library().hp_lse_forward(
            _threads(b), x.data_ptr(), b, c, n, r_c.data_ptr(), int(r_c.dim() > 0), y.data_ptr(),
            weighted_mean.data_ptr(), peak.data_ptr(), total.data_ptr(),
        )  # fmt: skip
        ctx.save_for_backward(x, r_c, y, weighted_mean, peak, total)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, r_c, y, weighted_mean, peak, total = ctx.saved_tensors
        grad_x = grad_r = None
        if ctx.needs_input_grad[0]:
            b, c, n = x.shape
            g = grad_y.contiguous()
            grad_x = torch.empty_like(x)
            library().hp_lse_backward(
                _threads(b), x.data_ptr(), b, c, n, r_c.data_ptr(), int(r_c.dim() > 0), g.data_ptr(),
                peak.data_ptr(), total.data_ptr(), grad_x.data_ptr(),
            )  # fmt: skip
        if ctx.needs_input_grad[1]:
            per_row = grad_y * (weighted_mean - y) / r_c  # (B, C)
            grad_r = per_row.sum() if r_c.dim() == 0 else per_row.sum(0)
        return grad_x, grad_r
