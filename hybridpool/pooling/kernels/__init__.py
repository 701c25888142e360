"""The kernels of the pooling layers: the fused avg / max / GeM / attention branches and log-sum-exp pooling.

- :mod:`.reference`: the maths in torch ops, whole tensors at once (:class:`~.reference.FusedBranches`, for
  ``torch.compile`` off the kernel's op and GPUs), and the per-row pieces every path shares;
- :mod:`.blocked`: the same maths for eager CPU code, a block of samples at a time (float64, and float32 without
  the C kernel);
- :mod:`.native` and ``native.c``: the C kernel (float32 on a CPU), built on first use;
- :mod:`.ops`: the C kernel as torch ops ``hybridpool::branches`` and ``hybridpool::lse`` (fake implementations and
  autograd formulas registered), which ``torch.compile`` and ``torch.export`` keep as one node each.

Which path runs is decided here and only here (:func:`use_op`): the op for float32 CPU inputs while the kernel is
built (eager, compiled and exported alike), else the reference maths.
"""

from __future__ import annotations

import math

import torch

from . import native, ops
from .blocked import BlockedBranches, blocked_forward
from .reference import FusedBranches, branch_forward

__all__ = ["lse_pool_rows", "pool_branches", "use_op"]


def use_op(x: torch.Tensor) -> bool:
    """Whether ``x`` goes to the C kernel's op: float32 on a CPU, the kernel built (``HYBRIDPOOL_NATIVE`` not ``0``,
    a C compiler found; under ``torch.compile`` decided once, while tracing), and no ONNX export running (exporters
    trace plain ops). What the kernel does not take within that (GeM with ``p < 1``, LSE with ``r <= 0``) the op
    computes with torch ops itself."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.onnx.is_in_onnx_export()
        and native.available()
    )


def _reference_branches(x, p, weight, log_temperature, eps, branches) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference maths: plain ops while exporting to ONNX and for compiled or GPU inference, blocks of samples
    in eager CPU code, :class:`FusedBranches` (whole tensors, which inductor fuses) compiled or on a GPU."""
    blocked = x.device.type == "cpu" and not torch.compiler.is_compiling()
    if torch.onnx.is_in_onnx_export():  # a custom autograd.Function has no ONNX form
        return branch_forward(x, p, weight, log_temperature, eps, branches)[:2]
    if not torch.is_grad_enabled():  # inference: nothing to keep for a backward (GeM's dp statistics included)
        return (blocked_forward if blocked else branch_forward)(x, p, weight, log_temperature, eps, branches)[:2]
    return (BlockedBranches if blocked else FusedBranches).apply(x, p, weight, log_temperature, eps, branches)


def pool_branches(
    x: torch.Tensor,
    branches: tuple[bool, bool, bool, bool],
    p: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    log_temperature: torch.Tensor | None = None,
    eps: float = 1e-6,
    exact_avg: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The enabled branches of avg / max / GeM / attention on a ``(B, C, H, W)`` feature map of any layout and
    floating dtype, in one pass.

    Half precision is computed in float32; float32 on a CPU runs the C kernel's op (:func:`use_op`), everything
    else the reference maths. ``p``: GeM's exponent ``()`` or ``(C,)``; ``weight``: the attention projection
    ``(heads, C)`` or ``(heads, C, 1, 1)``; ``log_temperature``: ``()``; ``eps``: GeM's clamp. ``exact_avg``: the
    average descriptor is torch's ``mean``, bit for bit ``x.mean((2, 3))`` (the kernel then leaves the average to
    torch, one more pass over ``x``; the reference computes it so anyway).

    Returns ``(descriptors (B, k, C) in x.dtype, attn (B, heads, H, W) or None)``.
    """
    b, c, h, w = x.shape
    work = x.to(torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)
    flat = work.contiguous().view(b, c, h * w)
    empty = flat.new_zeros(())

    def cast(t: torch.Tensor | None) -> torch.Tensor:
        return empty if t is None else t.to(flat.dtype)

    weight = weight.flatten(1) if weight is not None else None  # (heads, C, 1, 1) conv weights -> (heads, C)
    args = (flat, cast(p), cast(weight), cast(log_temperature), float(eps), branches)
    if use_op(flat):
        descriptors, attn = ops.branches(*args, exact_avg=exact_avg)
    else:
        descriptors, attn = _reference_branches(*args)
    return descriptors.to(x.dtype), (attn.view(b, attn.shape[1], h, w).to(x.dtype) if branches[3] else None)


def lse_pool_rows(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Log-sum-exp pooling ``(1/r) log(mean_n exp(r x))`` of ``x`` ``(B, C, N)`` with ``r`` ``()`` or ``(C,)`` in its
    dtype -> ``(B, C)``: the C kernel's op for float32 on a CPU (:func:`use_op`), else ``torch.logsumexp`` (which
    subtracts the max internally)."""
    if use_op(x):
        return ops.lse(x.contiguous(), r)
    lse = torch.logsumexp(x * (r.view(-1, 1) if r.dim() else r), dim=2)
    return (lse - math.log(x.shape[2])) / r
