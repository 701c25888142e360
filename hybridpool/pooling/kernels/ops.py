"""The C kernel as torch ops (``torch.library.custom_op``), so that ``torch.compile`` and ``torch.export`` see one op
each instead of re-deriving the maths:

- ``hybridpool::branches(x, p, weight, log_temperature, eps, branches, need_p_grad, exact_avg)`` ->
  ``(descriptors, attn, peak, s, t, logits)``: the fused avg / max / GeM / attention branches of ``x`` ``(B, C, N)``;
  the last four are what backward reads (an empty tensor where a branch is off), not differentiable;
- ``hybridpool::branches_backward(x, p, scaled_weight, peak, attn, grad_descriptors, gem_coef, eps, branches,
  need_x, need_w)`` -> ``(grad_x, d_logits, grad_w)``: the input-sized part of its backward
  (:func:`.blocked.blocked_backward`), which the autograd formula registered on ``branches`` calls; the per-row rest
  (GeM's exponent, the temperature) is torch ops in :func:`.blocked.branch_backward`;
- ``hybridpool::lse(x, r)`` -> ``(y, weighted_mean, peak, total)`` and ``hybridpool::lse_backward(x, r, grad_y, peak,
  total)`` -> ``grad_x``: log-sum-exp pooling, with its autograd formula.

Each op has a fake (meta) implementation, for tracing, and is defined for every float32 / float64 CPU input: it runs
the C kernel where the kernel takes the call (float32, the library built, GeM with ``eps > 0`` and ``p >= 1``, LSE
with ``r > 0``) and the torch maths of :mod:`.blocked` (LSE: ``torch.logsumexp``) otherwise, so that a data-dependent
condition such as ``p >= 1`` is decided inside the op, not in a traced graph. The layers only call the ops for
float32 CPU inputs with the library built (:func:`hybridpool.pooling.kernels.use_op`); float64 is there for
``torch.autograd.gradcheck`` of the registration.

:func:`branches` and :func:`lse` are the Python entry points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import native
from .blocked import blocked_backward, blocked_forward, branch_backward

# --------------------------------------------------------------------------------------------- the fused branches


@torch.library.custom_op("hybridpool::branches", mutates_args=(), device_types="cpu")
def branches_op(
    x: Tensor,
    p: Tensor,
    weight: Tensor,
    log_temperature: Tensor,
    eps: float,
    branches: list[bool],
    need_p_grad: bool,
    exact_avg: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused branches (arguments as :class:`.reference.FusedBranches`, ``x`` contiguous ``(B, C, N)``).

    ``need_p_grad``: also keep ``t = mean u^p log u`` for GeM's exponent gradient; ``exact_avg``: the average
    descriptor from torch's ``mean``, bit for bit ``x.mean(2)``. Returns ``(descriptors (B, k, C), attn (B, heads,
    N), peak (B, C), s (B, C), t (B, C), logits (B, heads, N))``, each an empty tensor where not computed.
    """
    flags = tuple(branches)
    if native.supports(x, p, eps, flags):
        descriptors, attn, saved = native.native_forward(
            x, p, weight, log_temperature, eps, flags, need_p_grad, exact_avg
        )
    else:  # float64, GeM with p < 1 or eps <= 0, or no kernel: the same maths in torch ops
        descriptors, attn, saved = blocked_forward(x, p, weight, log_temperature, eps, flags, need_p_grad)
    stats = (saved.get(key) for key in ("peak", "s", "t", "logits"))
    return descriptors, attn, *(x.new_empty(0) if t is None else t for t in stats)


@branches_op.register_fake
def _branches_fake(x, p, weight, log_temperature, eps, branches, need_p_grad, exact_avg):
    _, use_max, use_gem, use_attn = branches
    b, c, n = x.shape
    heads = weight.shape[0] if use_attn else 0

    def maybe(on: bool, *shape) -> Tensor:
        return x.new_empty(shape) if on else x.new_empty(0)

    return (
        x.new_empty(b, sum(branches), c),
        maybe(use_attn, b, heads, n),
        maybe(use_max or use_gem, b, c),
        maybe(use_gem, b, c),
        maybe(use_gem and need_p_grad, b, c),
        maybe(use_attn, b, heads, n),
    )


def _branches_setup_context(ctx, inputs, output) -> None:
    x, p, weight, log_temperature, eps, branches, need_p_grad, _ = inputs
    descriptors, attn, peak, s, t, logits = output
    ctx.eps, ctx.branches, ctx.need_p_grad = eps, tuple(branches), need_p_grad
    ctx.mark_non_differentiable(peak, s, t, logits)
    ctx.save_for_backward(x, p, weight, log_temperature, descriptors, attn, peak, s, t, logits)


def _branches_backward(ctx, grad_descriptors, _grad_attn, *_grad_stats):
    # the attention maps' gradient is not propagated, as on the reference paths: they are returned for inspection
    x, p, weight, log_temperature, descriptors, attn, peak, s, t, logits = ctx.saved_tensors
    branches = ctx.branches
    needs = tuple(ctx.needs_input_grad[:4])
    if branches[2] and needs[1] and not ctx.need_p_grad:
        raise RuntimeError("hybridpool::branches: GeM's p needs a gradient, but the op ran with need_p_grad=False")
    saved = {"peak": peak, "s": s, "t": t, "attn": attn, "logits": logits}
    if branches[2]:
        saved["y"] = descriptors[:, branches[0] + branches[1]]
    grads = branch_backward(
        branches_backward_op, x, p, weight, log_temperature, saved, grad_descriptors, ctx.eps, branches, needs
    )
    return (*grads, None, None, None, None)


@torch.library.custom_op("hybridpool::branches_backward", mutates_args=(), device_types="cpu")
def branches_backward_op(
    x: Tensor,
    p: Tensor,
    scaled_weight: Tensor,
    peak: Tensor,
    attn: Tensor,
    grad_descriptors: Tensor,
    gem_coef: Tensor,
    eps: float,
    branches: list[bool],
    need_x: bool,
    need_w: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The input-sized part of ``hybridpool::branches``'s backward: :func:`.blocked.blocked_backward` (arguments and
    returns as there), in the C kernel where it takes the call."""
    flags = tuple(branches)
    run = native.native_backward if native.supports(x, p, eps, flags) else blocked_backward
    return run(x, p, scaled_weight, peak, attn, grad_descriptors, gem_coef, eps, flags, need_x, need_w)


@branches_backward_op.register_fake
def _branches_backward_fake(x, p, scaled_weight, peak, attn, grad_descriptors, gem_coef, eps, branches, need_x, need_w):
    b, c, n = x.shape
    use_attn = branches[3]
    heads = scaled_weight.shape[0] if use_attn else 0
    return (
        x.new_empty(b, c, n) if need_x else x.new_empty(0),
        x.new_empty(b, heads, n) if use_attn else x.new_empty(0),
        x.new_empty(heads, c) if use_attn and need_w else x.new_empty(0),
    )


torch.library.register_autograd("hybridpool::branches", _branches_backward, setup_context=_branches_setup_context)


def branches(
    x: Tensor,
    p: Tensor,
    weight: Tensor,
    log_temperature: Tensor,
    eps: float,
    branches: tuple[bool, bool, bool, bool],
    exact_avg: bool = False,
) -> tuple[Tensor, Tensor]:
    """``hybridpool::branches`` with autograd: ``(descriptors (B, k, C), attn (B, heads, N) or empty)``, arguments
    as :class:`.reference.FusedBranches` (``x`` contiguous ``(B, C, N)`` float32 or float64 on a CPU). GeM's
    exponent statistics for backward are kept only while ``p`` needs a gradient."""
    need_p_grad = bool(branches[2]) and torch.is_grad_enabled() and p.requires_grad
    out = branches_op(x, p, weight, log_temperature, float(eps), list(branches), need_p_grad, exact_avg)
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------- log-sum-exp


def _lse_torch(x: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The op's torch form (``r <= 0``, float64, no kernel): ``(y, weighted_mean, peak, total)`` with ``peak`` the
    max of ``r x`` and ``total`` the sum of ``exp(r x - peak)`` (the kernel's ``peak`` is the max of ``x``; only the
    matching backward reads them)."""
    z = x * (r.view(-1, 1) if r.dim() else r)
    weights = torch.softmax(z, dim=2)
    y = (torch.logsumexp(z, dim=2) - math.log(x.shape[2])) / r
    peak = z.amax(2)
    total = torch.exp(z - peak.unsqueeze(2)).sum(2)
    return y, (weights * x).sum(2), peak, total


@torch.library.custom_op("hybridpool::lse", mutates_args=(), device_types="cpu")
def lse_op(x: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Log-sum-exp pooling ``(1/r) log(mean_n exp(r x))`` of ``x`` ``(B, C, N)``, ``r`` ``()`` or ``(C,)``:
    ``(y, weighted_mean, peak, total)``, all ``(B, C)`` (:func:`.native.lse_forward`); the kernel for ``r > 0``."""
    if native.lse_supports(x, r):
        return native.lse_forward(x, r)
    return _lse_torch(x, r)


@lse_op.register_fake
def _lse_fake(x, r):
    b, c, _ = x.shape
    return tuple(x.new_empty(b, c) for _ in range(4))


@torch.library.custom_op("hybridpool::lse_backward", mutates_args=(), device_types="cpu")
def lse_backward_op(x: Tensor, r: Tensor, grad_y: Tensor, peak: Tensor, total: Tensor) -> Tensor:
    """The input gradient of ``hybridpool::lse``: ``grad_y`` times the softmax weights of ``r x``."""
    if native.lse_supports(x, r):
        return native.lse_backward(x, r, grad_y, peak, total)
    z = x * (r.view(-1, 1) if r.dim() else r)
    return torch.exp(z - peak.unsqueeze(2)) * (grad_y / total).unsqueeze(2)


@lse_backward_op.register_fake
def _lse_backward_fake(x, r, grad_y, peak, total):
    return torch.empty_like(x)


def _lse_setup_context(ctx, inputs, output) -> None:
    x, r = inputs
    y, weighted_mean, peak, total = output
    ctx.mark_non_differentiable(weighted_mean, peak, total)
    ctx.save_for_backward(x, r, y, weighted_mean, peak, total)


def _lse_backward(ctx, grad_y, *_grad_stats):
    x, r, y, weighted_mean, peak, total = ctx.saved_tensors
    grad_x = grad_r = None
    if ctx.needs_input_grad[0]:
        grad_x = lse_backward_op(x, r, grad_y.contiguous(), peak, total)
    if ctx.needs_input_grad[1]:
        per_row = grad_y * (weighted_mean - y) / r  # (B, C)
        grad_r = per_row.sum() if r.dim() == 0 else per_row.sum(0)
    return grad_x, grad_r


torch.library.register_autograd("hybridpool::lse", _lse_backward, setup_context=_lse_setup_context)


def lse(x: Tensor, r: Tensor) -> Tensor:
    """``hybridpool::lse`` with autograd: ``x`` contiguous ``(B, C, N)`` float32 or float64 on a CPU, ``r`` ``()`` or
    ``(C,)`` in ``x``'s dtype -> ``(B, C)``."""
    return lse_op(x, r)[0]
