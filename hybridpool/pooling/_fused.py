"""One pass for the four standard branches of a hybrid pool: average, max, GeM and spatial attention.

Computed separately, the branches read the feature map four times, GeM keeps ``log`` and ``pow`` results for its
backward, and autograd writes and sums four full-size gradients. Here they share what they can:

- one ``amax`` serves the max branch and stabilises GeM (``u = x / max`` lies in ``(0, 1]``, so ``u^p`` never
  overflows, in any dtype);
- GeM keeps at most ``u^(p-1)`` for backward (:class:`FusedBranches`: one tensor the size of the input; backward
  then needs no ``log``/``exp``);
- backward writes one gradient buffer and accumulates every branch into it in place.

Two implementations share this maths:

- :class:`BlockedBranches`, for eager code on a CPU: a block of samples at a time (about 2 MiB of ``x``), so that
  every branch reads the block while it is in cache, GeM's elementwise steps run in place in one block-sized
  scratch buffer with ``log2``/``exp2`` (the cheapest of torch's logs and exps on a CPU), and backward recomputes
  ``u^(p-1)`` block by block instead of keeping it; the average and attention terms of the input gradient are a
  low-rank product added with one ``baddbmm`` per block, and masks are float 0/1 tensors (bool masks and
  ``masked_fill_`` cost several times more). Nothing input-sized is kept for backward besides ``x`` itself.
- :class:`FusedBranches`, whole tensors at once, for ``torch.compile`` and GPUs: under ``torch.compile`` the
  elementwise work fuses into a few loops, and ``log``/``exp`` use the short polynomial forms below (relative error
  < 1e-6 in float32), which is where GeM's time goes on a CPU.

:func:`pool_branches` picks one (and plain ops, :func:`branch_forward`, while exporting to ONNX).
"""

from __future__ import annotations

import math

import torch

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


def _gem_row_coef(g: torch.Tensor, s: torch.Tensor, p_flat: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, C)``: the factor of ``u^(p-1)`` in GeM's input gradient, ``dy/dx = S^(1/p - 1) u^(p-1) / N``.

    ``g``: upstream gradient ``(B, C)``; ``s``: ``mean u^p`` ``(B, C)``; ``p_flat``: ``()`` or ``(C,)``.
    """
    return g * s.pow(1.0 / p_flat - 1.0) / n


def _gem_grad_p(g: torch.Tensor, y: torch.Tensor, s: torch.Tensor, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
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
                grad_x.addcmul_(saved["u_pow_pm1"], _gem_row_coef(g, s, p_flat, n).unsqueeze(2))
            if ctx.needs_input_grad[1]:
                grad_p = _gem_grad_p(g, y, s, saved["t"], p)
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


# --- eager CPU path: blocks of samples that stay in cache --------------------------------------------------------

_BLOCK_BYTES = 2 << 20  # bytes of x per block: a block and its one or two scratch buffers stay in the L3 cache
_KINDS = ("avg", "max", "gem", "attn")


def _block_size(x: torch.Tensor) -> int:
    """Samples per block of the eager CPU path for ``x`` ``(B, C, N)``: at least one, at most ``B`` (``B = 0`` too)."""
    b, c, n = x.shape
    return max(1, min(b, _BLOCK_BYTES // max(1, c * n * x.element_size())))


_UNSHIFTED_LOG2_LIMIT = 100.0  # 2**±100 lies well inside float32's normal range (2**-126 .. 2**128)


def _power_form_runs(p: torch.Tensor, log2_scale: torch.Tensor, eps: float) -> list[tuple[int, int, bool]]:
    """Runs ``(start, stop, unshifted)`` of the samples of a block, by the form GeM's elementwise steps take.

    ``x`` lies in ``[eps, max]`` per row, so ``|log2 x| <= bound = max(|log2 eps|, |log2 max|)``. Forward raises
    ``x`` to ``p`` and backward to ``p - 1``; when ``max(|p|, |p - 1|) * bound`` is at most 100 for every row of a
    sample, both ``x^p`` and ``x^(p-1)`` are normal float32 values and the division by ``max^p`` (``max^(p-1)``)
    can wait for the ``(b, C)`` rows ("unshifted": a scalar multiply of every element, cheaper than a per-row
    shift); otherwise (large or negative ``p``, extreme values) and for per-channel ``p``, every row is shifted by
    ``log2 max`` first. The form is chosen per sample, so that it does not depend on the other samples in the
    block, and forward and backward choose alike. ``log2_scale``: ``(b, C)``. Synchronises ``p`` (a CPU tensor).
    """
    b = log2_scale.shape[0]
    if p.dim() or eps <= 0:
        return [(0, b, False)]
    p_value = float(p)
    exponent = max(abs(p_value), abs(p_value - 1.0))  # forward's p and backward's p - 1
    bound = log2_scale.abs().amax(1).clamp_min(abs(math.log2(eps)))  # (b,)
    fits = (bound * exponent <= _UNSHIFTED_LOG2_LIMIT).tolist()
    runs, start = [], 0
    for i in range(1, b + 1):
        if i == b or fits[i] != fits[start]:
            runs.append((start, i, fits[start]))
            start = i
    return runs


def _pow_rows(
    log2_x: torch.Tensor, e: torch.Tensor, log2_scale: torch.Tensor, unshifted: bool, out: torch.Tensor
) -> torch.Tensor | None:
    """GeM's power step, ``u^e = 2^(e log2 x - e log2 max)``, in one of the two forms of :func:`_power_form_runs`.

    ``log2_x``: ``(r, C, N)``, ``log2 clamp(x, eps)``; ``e``: ``()`` or ``(C, 1)`` (``p`` in forward, ``p - 1`` in
    backward; ``()`` when unshifted); ``log2_scale``: ``(r, C)``, ``log2 max``; ``out``: ``(r, C, N)``, may be
    ``log2_x`` itself. Shifted, ``out`` gets ``u^e`` and the result is ``None``; unshifted, ``out`` gets ``x^e`` and
    the result is the ``(r, C)`` factor ``2^(-e log2 max) = max^-e`` still to apply to its rows.
    """
    if unshifted:
        torch.mul(log2_x, e, out=out).exp2_()
        return torch.exp2(log2_scale * -e)
    torch.addcmul((log2_scale * -e.squeeze(-1)).unsqueeze(2), log2_x, e, out=out).exp2_()
    return None


def _block_diag_columns(g: torch.Tensor, heads: int) -> torch.Tensor:
    """``(b, C)`` -> ``(b, C, heads)``: column ``k`` holds ``g`` on the ``k``-th group of ``C / heads`` channels."""
    b, c = g.shape
    out = g.new_zeros(b, heads, c // heads, heads)
    torch.diagonal(out, dim1=1, dim2=3).copy_(g.view(b, heads, c // heads).transpose(1, 2))
    return out.view(b, c, heads)


def blocked_forward(
    x: torch.Tensor,
    p: torch.Tensor,
    weight: torch.Tensor,
    log_temperature: torch.Tensor,
    eps: float,
    branches: tuple[bool, bool, bool, bool],
    need_p_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`branch_forward` for eager CPU code, a block of samples at a time (one read of ``x`` from memory).

    Every branch reads the block while it is in cache, GeM's elementwise steps run in place in one block-sized
    scratch buffer, and only per-``(B, C)`` and per-``(B, heads, N)`` tensors are kept for backward (which
    recomputes GeM's ``u^(p-1)`` block by block). Same arguments and returns as :func:`branch_forward`.
    """
    use_avg, use_max, use_gem, use_attn = branches
    b, c, n = x.shape
    per = _block_size(x)
    outs: dict[str, torch.Tensor] = {}
    saved: dict[str, torch.Tensor] = {}
    if use_avg:
        outs["avg"] = x.new_empty(b, c)
    if use_max or use_gem:
        peak = x.new_empty(b, c)
        saved["peak"] = peak
        if use_max:
            outs["max"] = peak
    if use_gem:
        p_b = p.view(-1, 1) if p.dim() else p  # () or (C, 1), broadcasts over (b, C, N)
        s = x.new_empty(b, c)
        t = x.new_empty(b, c) if need_p_grad else None
        scratch = x.new_empty(per * c * n)
        scratch_p = x.new_empty(per * c * n) if need_p_grad else None
    attn = x.new_empty(0)
    if use_attn:
        heads = weight.shape[0]
        scaled_weight = weight * torch.exp(-log_temperature)  # (heads, C): logits come out divided by T
        logits = x.new_empty(b, heads, n)
        attn = x.new_empty(b, heads, n)
        outs["attn"] = x.new_empty(b, c)
        saved.update(attn=attn, logits=logits)
    for b0 in range(0, b, per):
        b1 = min(b, b0 + per)
        xc = x[b0:b1]  # (bc, C, N)
        bc = b1 - b0
        if use_max or use_gem:
            torch.amax(xc, 2, out=peak[b0:b1])
        if use_avg:
            torch.mean(xc, 2, out=outs["avg"][b0:b1])
        if use_attn:
            torch.bmm(scaled_weight.expand(bc, -1, -1), xc, out=logits[b0:b1])
            torch.softmax(logits[b0:b1], 2, out=attn[b0:b1])
            torch.bmm(
                xc.view(bc * heads, c // heads, n),
                attn[b0:b1].view(bc * heads, n, 1),
                out=outs["attn"][b0:b1].view(bc * heads, c // heads, 1),
            )
        if use_gem:
            # u^p = 2^(p log2 x - p log2 max): log2 / exp2 are the cheapest of torch's logs and exps on a CPU
            log2_scale = peak[b0:b1].clamp_min(eps).log2()  # (bc, C)
            for r0, r1, unshifted in _power_form_runs(p, log2_scale, eps):
                xr, ls, sr = xc[r0:r1], log2_scale[r0:r1], s[b0 + r0 : b0 + r1]
                log2_x = torch.clamp(xr, min=eps, out=scratch[: xr.numel()].view_as(xr)).log2_()
                u_pow_p = scratch_p[: xr.numel()].view_as(xr) if need_p_grad else log2_x
                row_factor = _pow_rows(log2_x, p_b, ls, unshifted, out=u_pow_p)  # unshifted: x^p, / max^p per row
                torch.sum(u_pow_p, 2, out=sr)
                if row_factor is not None:
                    sr.mul_(row_factor)
                if need_p_grad:  # sum u^p log2 u = sum u^p log2 x - log2 max * sum u^p
                    tr = torch.sum(u_pow_p.mul_(log2_x), 2, out=t[b0 + r0 : b0 + r1])
                    if row_factor is not None:
                        tr.mul_(row_factor)
                    tr.sub_(ls * sr)
    if use_gem:
        s.div_(n)  # mean u^p, in [1/N, 1]
        p_flat = p_b.squeeze(-1) if p.dim() else p
        outs["gem"] = peak.clamp_min(eps) * s.pow(1.0 / p_flat)
        saved.update(s=s, y=outs["gem"])
        if need_p_grad:
            saved["t"] = t.mul_(_LN2 / n)  # mean u^p log u
    descriptors = torch.stack([outs[kind] for kind, on in zip(_KINDS, branches, strict=True) if on], dim=1)
    return descriptors, attn, saved


def _attn_d_logits(g_attn: torch.Tensor, xc: torch.Tensor, attn: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The attention branch's logit gradient for one block, through the softmax (before the logits' ``1 / T``).

    ``g_attn``: upstream gradient of the attention descriptor ``(bc, C)``, contiguous; ``xc``: the block of ``x``
    ``(bc, C, N)``; ``attn``: its softmax weights ``(bc, heads, N)``. Writes and returns ``out`` ``(bc, heads, N)``:
    ``d_attn = g_group . x_group`` per head and position, then ``attn * (d_attn - sum_N attn * d_attn)``.
    """
    bc, heads, n = attn.shape
    group = xc.shape[1] // heads
    d_attn = torch.bmm(g_attn.view(bc * heads, 1, group), xc.view(bc * heads, group, n)).view(bc, heads, n)
    return torch.mul(attn, d_attn - (attn * d_attn).sum(2, keepdim=True), out=out)


def _grad_x_block(
    gx: torch.Tensor,
    xc: torch.Tensor,
    mask: torch.Tensor | None,
    peak: torch.Tensor | None,
    eps: float,
    gem: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    g_max: torch.Tensor | None,
    low_rank: torch.Tensor | None,
    right: torch.Tensor | None,
) -> None:
    """Write one block's input gradient into ``gx`` ``(bc, C, N)``: the sum of the given terms (at least one).

    Args:
        gx: the block of the input gradient, ``(bc, C, N)``; written, not read.
        xc: the block of ``x``, ``(bc, C, N)``.
        mask: a ``(bc, C, N)`` scratch buffer for the float 0/1 masks (with ``gem`` or ``g_max``).
        peak: the rows' maxima ``(bc, C)`` (with ``gem`` or ``g_max``).
        eps: GeM's clamp.
        gem: ``(p () or (C,), p - 1 () or (C, 1), coef (bc, C, 1))``: adds ``coef * u^(p-1)``, ``0`` where the clamp
            cuts ``x`` off, with ``coef`` from :func:`_gem_row_coef`.
        g_max: the max branch's upstream gradient ``(bc, C)``, shared by tied maxima.
        low_rank, right: ``(bc, C, r)`` and ``(bc, r, N)``: adds their product (the average and attention terms).
    """
    dense = False  # whether gx holds a term yet (the first term writes it, later ones add)
    # masks are written as 0./1. floats: bool masks and masked_fill_ are several times slower on a CPU
    if gem is not None:  # coef * u^(p-1) = coef * 2^((p-1) log2 x - (p-1) log2 max)
        p, p_m1, coef = gem
        log2_scale = peak.clamp_min(eps).log2()  # (bc, C)
        torch.clamp(xc, min=eps, out=gx).log2_()
        for r0, r1, unshifted in _power_form_runs(p, log2_scale, eps):  # as in the forward
            gr, cr = gx[r0:r1], coef[r0:r1]
            row_factor = _pow_rows(gr, p_m1, log2_scale[r0:r1], unshifted, out=gr)  # unshifted: / max^(p-1) too
            gr.mul_(cr if row_factor is None else cr * row_factor.unsqueeze(2))
        gx.mul_(torch.ge(xc, eps, out=mask))
        dense = True
    if g_max is not None:
        ties = torch.eq(xc, peak.unsqueeze(2), out=mask)  # tied maxima share the gradient
        share = (g_max / ties.sum(2)).unsqueeze(2)
        if dense:
            gx.addcmul_(ties, share)
        else:
            torch.mul(ties, share, out=gx)
            dense = True
    if low_rank is not None:
        if dense:
            gx.baddbmm_(low_rank, right)
        else:
            torch.bmm(low_rank, right, out=gx)


def save_branch_context(ctx, inputs: tuple, eps: float, branches: tuple[bool, ...], saved: dict) -> None:
    """What the blocked and native Functions keep for backward: ``(x, p, weight, log_temperature)``, ``eps``, the
    branch flags and the forward's ``saved`` tensors."""
    ctx.branches, ctx.eps = branches, eps
    ctx.keys = tuple(saved)
    ctx.save_for_backward(*inputs, *saved.values())


def branch_context(ctx, grad_out: torch.Tensor):
    """The inverse of :func:`save_branch_context` in backward: ``(x, p, weight, log_temperature, saved, grads)``,
    ``grads`` the upstream gradient of each enabled branch ``(B, C)`` by kind."""
    x, p, weight, log_temperature, *rest = ctx.saved_tensors
    kinds = [kind for kind, on in zip(_KINDS, ctx.branches, strict=True) if on]
    grads = dict(zip(kinds, grad_out.unbind(1), strict=True))
    return x, p, weight, log_temperature, dict(zip(ctx.keys, rest, strict=True)), grads


class BlockedBranches(torch.autograd.Function):
    """:class:`FusedBranches` for eager CPU code: the same maths, computed a block of samples at a time.

    Forward reads ``x`` from memory once (:func:`blocked_forward`); backward reads it once more and writes the input
    gradient block by block: GeM's ``u^(p-1)`` and the max branch's tie mask are recomputed in cache, and the
    average and attention terms, which have rank ``1 + 2 * heads`` per sample, are added with one ``baddbmm``.
    Arguments and returns as :class:`FusedBranches`.
    """

    @staticmethod
    def forward(ctx, x, p, weight, log_temperature, eps: float, branches: tuple[bool, bool, bool, bool]):
        descriptors, attn, saved = blocked_forward(
            x, p, weight, log_temperature, eps, branches, need_p_grad=ctx.needs_input_grad[1]
        )
        save_branch_context(ctx, (x, p, weight, log_temperature), eps, branches, saved)
        return descriptors, attn

    @staticmethod
    def backward(ctx, grad_out, _grad_attn):
        x, p, weight, log_temperature, saved, grads = branch_context(ctx, grad_out)
        use_avg, use_max, use_gem, use_attn = ctx.branches
        need_x, need_p, need_w, need_log_t = ctx.needs_input_grad[:4]
        b, c, n = x.shape
        grad_x = grad_p = grad_w = grad_log_t = None
        if use_gem:
            s, g = saved["s"], grads["gem"]
            if need_p:
                grad_p = _gem_grad_p(g, saved["y"], s, saved["t"], p)
            if need_x:
                coef = _gem_row_coef(g, s, p.view(-1) if p.dim() else p, n).unsqueeze(2)  # (B, C, 1)
                p_m1 = (p.view(-1, 1) if p.dim() else p) - 1.0
        need_attn_grads = use_attn and (need_x or need_w or need_log_t)
        if not (need_x or need_attn_grads):
            return grad_x, grad_p, grad_w, grad_log_t, None, None
        if use_attn:
            attn, heads = saved["attn"], weight.shape[0]
            inv_t = torch.exp(-log_temperature)
            g_attn = grads["attn"].contiguous()
            d_logits = torch.empty_like(attn)
            grad_w_t = x.new_zeros(c, heads) if need_w else None
        if need_x:
            grad_x = torch.empty_like(x)
            # low-rank part: grad_x[b] += A[b] @ R[b], columns of A / rows of R: avg (g/N, 1), attention weights
            # (g per head group, attn) and logits (W^T / T, d_logits)
            cols: list[torch.Tensor] = []
            if use_avg:
                cols.append((grads["avg"] / n).unsqueeze(2))
            if use_attn:
                cols += [_block_diag_columns(g_attn, heads), (weight.t() * inv_t).expand(b, c, heads)]
            low_rank = torch.cat(cols, 2) if cols else None  # (B, C, r)
        per = _block_size(x)
        scratch = x.new_empty(per * c * n) if need_x and (use_gem or use_max) else None
        for b0 in range(0, b, per):
            b1 = min(b, b0 + per)
            xc = x[b0:b1]
            bc = b1 - b0
            if use_attn:
                dl = _attn_d_logits(g_attn[b0:b1], xc, attn[b0:b1], out=d_logits[b0:b1])
                if need_w:
                    grad_w_t += torch.bmm(xc, dl.transpose(1, 2)).sum(0)
            if not need_x:
                continue
            right = None
            if low_rank is not None:
                rows = [x.new_ones(bc, 1, n)] if use_avg else []
                if use_attn:
                    rows += [attn[b0:b1], d_logits[b0:b1]]
                right = torch.cat(rows, 1)  # (bc, r, N)
            _grad_x_block(
                grad_x[b0:b1],
                xc,
                mask=scratch[: xc.numel()].view_as(xc) if scratch is not None else None,
                peak=saved["peak"][b0:b1] if use_gem or use_max else None,
                eps=ctx.eps,
                gem=(p, p_m1, coef[b0:b1]) if use_gem else None,
                g_max=grads["max"][b0:b1] if use_max else None,
                low_rank=low_rank[b0:b1] if low_rank is not None else None,
                right=right,
            )
        if use_attn:
            if need_w:
                grad_w = grad_w_t.t() * inv_t
            if need_log_t:
                grad_log_t = -(d_logits * saved["logits"]).sum()
        return grad_x, grad_p, grad_w, grad_log_t, None, None


def pool_branches(
    x: torch.Tensor,
    branches: tuple[bool, bool, bool, bool],
    p: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    log_temperature: torch.Tensor | None = None,
    eps: float = 1e-6,
    exact_avg: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run :class:`FusedBranches` on a ``(B, C, H, W)`` feature map of any layout and floating dtype.

    Half precision is computed in float32; eager float32 on a CPU runs the native kernel (:mod:`._native`) where it
    is available. ``exact_avg``: the average descriptor is torch's ``mean``, bit for bit ``x.mean((2, 3))`` (the
    native kernel then leaves the average to torch, one more pass over ``x``).

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
    from . import _native  # imports this module

    blocked = flat.device.type == "cpu" and not torch.compiler.is_compiling()
    native = blocked and _native.supports(flat, args[1], args[4], branches)  # float32: the C kernel
    if torch.onnx.is_in_onnx_export():  # exporters trace plain ops; a custom autograd.Function has no ONNX form
        descriptors, attn, _ = branch_forward(*args)
    elif not torch.is_grad_enabled():  # inference: nothing to keep for a backward (GeM's dp statistics included)
        if native:
            descriptors, attn, _ = _native.native_forward(*args, exact_avg=exact_avg)
        else:
            descriptors, attn, _ = (blocked_forward if blocked else branch_forward)(*args)
    elif native:
        descriptors, attn = _native.NativeBranches.apply(*args, exact_avg)
    elif blocked:
        descriptors, attn = BlockedBranches.apply(*args)
    else:
        descriptors, attn = FusedBranches.apply(*args)
    return descriptors.to(x.dtype), (attn.view(b, attn.shape[1], h, w).to(x.dtype) if branches[3] else None)
