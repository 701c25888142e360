"""The torch maths of the fused avg / max / GeM / attention branches: the reference every other path matches.

Computed separately, the branches read the feature map four times, GeM keeps ``log`` and ``pow`` results for its
backward, and autograd writes and sums four full-size gradients. Here they share what they can:

- one ``amax`` serves the max branch and stabilises GeM (``u = x / max`` lies in ``(0, 1]``, so ``u^p`` never
  overflows, in any dtype);
- GeM keeps at most ``u^(p-1)`` for backward (one tensor the size of the input; backward then needs no
  ``log``/``exp``);
- backward writes one gradient buffer and accumulates every branch into it in place.

:class:`FusedBranches` computes them on whole tensors, for ``torch.compile`` (off the C kernel's op) and GPUs:
under ``torch.compile`` the elementwise work fuses into a few loops, and ``log``/``exp`` use the short polynomial
forms below (relative error < 1e-6 in float32), which is where GeM's time goes on a CPU. :func:`branch_forward`
is its forward in plain ops (inference, ONNX export). The eager CPU form of the same maths is in
:mod:`.blocked`, the C kernel in :mod:`.native` (registered as torch ops in :mod:`.ops`); :func:`gem_row_coef`
and :func:`gem_grad_p` are the per-row pieces of GeM's backward that all of them share.
"""

from __future__ import annotations

import torch

KINDS = ("avg", "max", "gem", "attn")  # the branches, in the order of the descriptors

# log2(1 + t) for t in [sqrt(1/2) - 1, sqrt(2) - 1], and 2**f for f in [-1/2, 1/2]: least-squares fits in float64
# (max error 4.89e-08 absolute and 7.68e-08 relative), highest power first; from scripts/fit_fast_math.py.
_LOG2_COEFFS = (
    -0.14199514638797223,
    0.23610973850515374,
    -0.25111422682990275,
    0.28684820701818575,
    -0.3599831202887297,
    0.48093263122767665,
    -0.7213611580243143,
    1.4426948348143545,
    4.1276956616890064e-08,
)
_EXP2_COEFFS = (
    0.001326697038799394,
    0.009675459745510423,
    0.0555074261599759,
    0.2402212175356194,
    0.6931469491610677,
    1.0000000710297,
)
_LN2 = 0.6931471805599453


def _horner(coeffs: tuple[float, ...], v: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(v, coeffs[0])
    for c in coeffs[1:]:
        out = out * v + c
    return out


def _fast_log(x: torch.Tensor) -> torch.Tensor:
    """Natural log of positive normal float32 values via exponent bits + a polynomial (for compiled code)."""
    bits = x.view(torch.int32)
    exponent = (bits >> 23) - 127
    mantissa = ((bits & 0x007FFFFF) | 0x3F800000).view(torch.float32)  # in [1, 2)
    high = mantissa > 1.4142135623730951
    mantissa = torch.where(high, mantissa * 0.5, mantissa)
    exponent = exponent + high.to(torch.int32)
    return (exponent.to(torch.float32) + _horner(_LOG2_COEFFS, mantissa - 1.0)) * _LN2


def _fast_exp(z: torch.Tensor) -> torch.Tensor:
    """exp(z) for z in roughly [-87, 0] in float32 via 2**round + a polynomial (for compiled code)."""
    z2 = (z * (1.0 / _LN2)).clamp_min(-126.0)
    whole = torch.round(z2)
    frac = _horner(_EXP2_COEFFS, z2 - whole)
    return (frac.view(torch.int32) + (whole.to(torch.int32) << 23)).view(torch.float32)


def _log_exp(x: torch.Tensor):
    """``(log, exp)`` for temporaries: polynomial forms when compiling float32, else torch's, in place."""
    if x.dtype == torch.float32 and torch.compiler.is_compiling():
        return _fast_log, _fast_exp
    return torch.Tensor.log_, torch.Tensor.exp_


def gem_row_coef(g: torch.Tensor, s: torch.Tensor, p_flat: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, C)``: the factor of ``u^(p-1)`` in GeM's input gradient, ``dy/dx = S^(1/p - 1) u^(p-1) / N``.

    ``g``: upstream gradient ``(B, C)``; ``s``: ``mean u^p`` ``(B, C)``; ``p_flat``: ``()`` or ``(C,)``.
    """
    return g * s.pow(1.0 / p_flat - 1.0) / n


def gem_grad_p(g: torch.Tensor, y: torch.Tensor, s: torch.Tensor, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """GeM's exponent gradient, ``()`` or ``(C,)`` like ``p``, from ``dy/dp = y (-log S / p^2 + T / (p S))``.

    ``g``: upstream gradient ``(B, C)``; ``y``: GeM's output, ``s``: ``mean u^p``, ``t``: ``mean u^p log u``, all
    ``(B, C)``.
    """
    p_flat = p.view(-1) if p.dim() else p
    dy_dp = y * (-torch.log(s) / p_flat**2 + t / (p_flat * s))
    return (g * dy_dp).sum() if p.dim() == 0 else (g * dy_dp).sum(0)


def branch_forward(
    x: torch.Tensor,
    p: torch.Tensor,
    weight: torch.Tensor,
    log_temperature: torch.Tensor,
    eps: float,
    branches: tuple[bool, bool, bool, bool],
    need_x_grad: bool = False,
    need_p_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The forward maths of :class:`FusedBranches` (arguments as there), plus what backward needs.

    Returns ``(descriptors (B, k, C), attn (B, heads, N) or empty, saved tensors for backward)``.
    """
    use_avg, use_max, use_gem, use_attn = branches
    b, c, n = x.shape
    log_into, exp_into = _log_exp(x)
    outs: list[torch.Tensor] = []
    saved: dict[str, torch.Tensor] = {}
    if use_avg:
        outs.append(x.mean(2))
    if use_max or use_gem:
        peak = x.amax(2, keepdim=True)  # (B, C, 1)
        if use_max:
            outs.append(peak.squeeze(2))
            saved["peak"] = peak
    if use_gem:
        p_b = p.view(-1, 1) if p.dim() else p  # () or (C, 1), broadcasts over (B, C, N)
        scale = peak.clamp_min(eps)
        log_u = log_into(x.clamp_min(eps).div_(scale))  # log(u), u = clamp(x, eps) / max in (0, 1]
        u_pow_p = exp_into(log_u * p_b)
        s = u_pow_p.mean(2)  # (B, C), in [1/N, 1]
        p_flat = p_b.squeeze(-1) if p.dim() else p
        y = scale.squeeze(2) * s.pow(1.0 / p_flat)
        outs.append(y)
        saved.update(s=s, y=y)
        if need_p_grad:
            saved["t"] = log_u.mul_(u_pow_p).mean(2)  # mean(u^p log u), (B, C); log_u is not needed again
        if need_x_grad:  # u^(p-1) = u^p * max / x, and 0 where the clamp cuts x off
            saved["u_pow_pm1"] = u_pow_p.mul_(scale).div_(x).masked_fill_(x < eps, 0.0)
    attn = x.new_empty(0)
    if use_attn:
        heads = weight.shape[0]
        projected = torch.bmm(weight.expand(b, -1, -1), x)  # (B, heads, N); matmul would copy x
        logits = projected * torch.exp(-log_temperature)
        attn = torch.softmax(logits, dim=2)
        grouped = x.view(b, heads, c // heads, n)
        outs.append(torch.matmul(grouped, attn.unsqueeze(3)).view(b, c))
        saved.update(attn=attn, logits=logits)
    return torch.stack(outs, dim=1), attn, saved


class FusedBranches(torch.autograd.Function):
    """Descriptors of the branches avg / max / gem / attn (any subset, in that order) in one pass.

    Forward inputs:
        x: ``(B, C, N)`` features, ``N = H * W``, float32/float64 (callers upcast half precision).
        p: GeM exponent ``()`` or ``(C,)`` (ignored without gem).
        weight: attention projection ``(heads, C)`` (ignored without attn; a bias would cancel in the softmax).
        log_temperature: ``()`` softmax temperature as its log (ignored without attn).
        eps: GeM clamp.
        branches: tuple of flags ``(avg, max, gem, attn)``.

    Returns:
        ``(descriptors (B, k, C), attn (B, heads, N) or an empty tensor)`` for the ``k`` enabled branches.
    """

    @staticmethod
    def forward(ctx, x, p, weight, log_temperature, eps: float, branches: tuple[bool, bool, bool, bool]):
        need_x_grad, need_p_grad = ctx.needs_input_grad[:2]
        descriptors, attn, saved = branch_forward(
            x, p, weight, log_temperature, eps, branches, need_x_grad, need_p_grad
        )
        ctx.branches = branches
        ctx.keys = tuple(saved)
        ctx.save_for_backward(x, p, weight, log_temperature, *saved.values())
        return descriptors, attn

    @staticmethod
    def backward(ctx, grad_out, _grad_attn):
        x, p, weight, log_temperature, *rest = ctx.saved_tensors
        saved = dict(zip(ctx.keys, rest, strict=True))
        use_avg, use_max, use_gem, use_attn = ctx.branches
        b, c, n = x.shape
        grads = iter(grad_out.unbind(1))
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (next(grads) / n).unsqueeze(2).expand(b, c, n).clone() if use_avg else torch.zeros_like(x)
        elif use_avg:
            next(grads)
        grad_p = grad_w = grad_log_t = None
        if use_max:
            g = next(grads)
            if grad_x is not None:
                ties = x == saved["peak"]  # amax semantics: tied maxima share the gradient
                if torch.compiler.is_compiling():  # fuses into one loop
                    share = (g / ties.sum(2, dtype=x.dtype)).unsqueeze(2)
                    grad_x = torch.where(ties, grad_x + share, grad_x)
                else:  # touches only the about B*C maxima: no full-size temporary
                    bi, ci, ni = ties.nonzero(as_tuple=True)
                    counts = torch.zeros_like(g).index_put_((bi, ci), torch.ones_like(bi, dtype=g.dtype), True)
                    grad_x.index_put_((bi, ci, ni), (g / counts)[bi, ci], accumulate=True)
        if use_gem:
            g = next(grads)
            s, y = saved["s"], saved["y"]
            p_flat = p.view(-1) if p.dim() else p
            if grad_x is not None:
                grad_x.addcmul_(saved["u_pow_pm1"], gem_row_coef(g, s, p_flat, n).unsqueeze(2))
            if ctx.needs_input_grad[1]:
                grad_p = gem_grad_p(g, y, s, saved["t"], p)
        if use_attn:
            g = next(grads)
            attn, logits = saved["attn"], saved["logits"]
            heads = attn.shape[1]
            grouped = x.view(b, heads, c // heads, n)
            g_grouped = g.view(b, heads, c // heads, 1)
            d_attn = torch.matmul(g_grouped.transpose(2, 3), grouped).squeeze(2)  # (B, heads, N)
            d_logits = attn * (d_attn - (attn * d_attn).sum(2, keepdim=True))  # through the softmax
            inv_t = torch.exp(-log_temperature)
            if grad_x is not None:
                grad_x.view(b, heads, c // heads, n).addcmul_(g_grouped, attn.unsqueeze(2))
                grad_x.baddbmm_(weight.t().expand(b, c, heads), d_logits * inv_t)
            if ctx.needs_input_grad[2]:
                grad_w = torch.bmm(x, d_logits.transpose(1, 2)).sum(0).t() * inv_t  # (heads, C), x not copied
            if ctx.needs_input_grad[3]:
                grad_log_t = -(d_logits * logits).sum()
        return grad_x, grad_p, grad_w, grad_log_t, None, None
