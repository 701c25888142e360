"""The eager CPU form of the reference maths (:mod:`.reference`): a block of samples at a time.

A block is about 2 MiB of ``x``, so that every branch reads it while it is in cache; GeM's elementwise steps run in
place in one block-sized scratch buffer with ``log2``/``exp2`` (the cheapest of torch's logs and exps on a CPU), and
backward recomputes ``u^(p-1)`` block by block instead of keeping it; the average and attention terms of the input
gradient are a low-rank product added with one ``baddbmm`` per block, and masks are float 0/1 tensors (bool masks
and ``masked_fill_`` cost several times more). Nothing input-sized is kept for backward besides ``x`` itself.

Eager float64 (and float32 where the C kernel is off) runs :class:`BlockedBranches`; the C kernel's op
(:mod:`.ops`) runs :func:`blocked_forward` / :func:`blocked_backward` for what the kernel does not take (float64,
GeM with ``p < 1`` or ``eps <= 0``, no kernel built).
"""

from __future__ import annotations

import math

import torch

from .reference import _LN2, KINDS, gem_grad_p, gem_row_coef

_BLOCK_BYTES = 2 << 20  # bytes of x per block: a block and its one or two scratch buffers stay in the L3 cache


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
    descriptors = torch.stack([outs[kind] for kind, on in zip(KINDS, branches, strict=True) if on], dim=1)
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
            cuts ``x`` off, with ``coef`` from :func:`gem_row_coef`.
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


def blocked_backward(
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
    """The input-sized part of the branches' backward, a block of samples at a time (see :func:`branch_backward`).

    Reads ``x`` once more and writes the input gradient block by block: GeM's ``u^(p-1)`` and the max branch's tie
    mask are recomputed in cache, and the average and attention terms, which have rank ``1 + 2 * heads`` per
    sample, are added with one ``baddbmm``.

    Args:
        x: ``(B, C, N)``; p: GeM's exponent ``()`` or ``(C,)``; scaled_weight: the attention projection over the
            temperature ``W / T`` ``(heads, C)``; peak: the rows' maxima ``(B, C)`` (with max or gem); attn: the
            softmax weights ``(B, heads, N)`` (with attn).
        grad_descriptors: the upstream gradient ``(B, k, C)``.
        gem_coef: ``(B, C)``, the factor of ``u^(p-1)`` (:func:`.reference.gem_row_coef`; with gem and ``need_x``).
        eps, branches: as in the forward; need_x / need_w: whether the input / projection gradient is wanted.

    Returns:
        ``(grad_x (B, C, N), d_logits (B, heads, N), grad_w (heads, C))``, each an empty tensor where not computed:
        ``d_logits`` is the gradient of the temperature-scaled logits (with attn), ``grad_w`` still to be divided by
        ``T``.
    """
    use_avg, use_max, use_gem, use_attn = branches
    b, c, n = x.shape
    grads = dict(zip([k for k, on in zip(KINDS, branches, strict=True) if on], grad_descriptors.unbind(1), strict=True))
    need_w = need_w and use_attn
    grad_x = torch.empty_like(x) if need_x else x.new_empty(0)  # (each output its own tensor: no aliases)
    d_logits, grad_w_t = x.new_empty(0), None
    if use_attn:
        heads = scaled_weight.shape[0]
        g_attn = grads["attn"].contiguous()
        d_logits = torch.empty_like(attn)
        grad_w_t = x.new_zeros(c, heads) if need_w else None
    if need_x:
        if use_gem:
            coef = gem_coef.unsqueeze(2)  # (B, C, 1)
            p_m1 = (p.view(-1, 1) if p.dim() else p) - 1.0
        # low-rank part: grad_x[b] += A[b] @ R[b], columns of A / rows of R: avg (g/N, 1), attention weights
        # (g per head group, attn) and logits (W^T / T, d_logits)
        cols: list[torch.Tensor] = []
        if use_avg:
            cols.append((grads["avg"] / n).unsqueeze(2))
        if use_attn:
            cols += [_block_diag_columns(g_attn, heads), scaled_weight.t().expand(b, c, heads)]
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
            peak=peak[b0:b1] if use_gem or use_max else None,
            eps=eps,
            gem=(p, p_m1, coef[b0:b1]) if use_gem else None,
            g_max=grads["max"][b0:b1] if use_max else None,
            low_rank=low_rank[b0:b1] if low_rank is not None else None,
            right=right,
        )
    return grad_x, d_logits, (grad_w_t.t().contiguous() if need_w else x.new_empty(0))


def branch_backward(
    input_grads,
    x: torch.Tensor,
    p: torch.Tensor,
    weight: torch.Tensor,
    log_temperature: torch.Tensor,
    saved: dict[str, torch.Tensor],
    grad_descriptors: torch.Tensor,
    eps: float,
    branches: tuple[bool, bool, bool, bool],
    needs: tuple[bool, bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The backward of the branches from what a forward kept (``saved``: ``peak``, ``s``, ``y``, ``t``, ``attn``,
    ``logits`` as :func:`blocked_forward` returns them): the blocked path's and the C kernel op's, which differ only
    in ``input_grads`` (:func:`blocked_backward`, or the op ``hybridpool::branches_backward``, same arguments).

    The per-row pieces are torch ops here: GeM's exponent gradient from the kept statistics, GeM's row factor, the
    projection's and temperature's gradients from ``d_logits``. ``needs``: which of ``(x, p, weight,
    log_temperature)`` want a gradient. Returns their gradients (``None`` where not wanted).
    """
    _, _, use_gem, use_attn = branches
    need_x, need_p, need_w, need_log_t = needs
    n = x.shape[2]
    grad_x = grad_p = grad_w = grad_log_t = None
    empty = x.new_empty(0)
    coef = empty
    if use_gem:
        g, s = grad_descriptors[:, sum(branches[:2])], saved["s"]
        if need_p:
            grad_p = gem_grad_p(g, saved["y"], s, saved["t"], p)
        if need_x:
            coef = gem_row_coef(g, s, p.view(-1) if p.dim() else p, n).contiguous()  # (B, C)
    need_w, need_log_t = need_w and use_attn, need_log_t and use_attn
    if not (need_x or need_w or need_log_t):
        return grad_x, grad_p, grad_w, grad_log_t
    scaled_weight, inv_t = empty, None
    if use_attn:
        inv_t = torch.exp(-log_temperature)
        scaled_weight = (weight * inv_t).contiguous()
    grad_x, d_logits, grad_w_t = input_grads(
        x, p, scaled_weight, saved.get("peak", empty), saved.get("attn", empty), grad_descriptors.contiguous(), coef,
        eps, branches, need_x, need_w,
    )  # fmt: skip
    if need_w:
        grad_w = grad_w_t * inv_t
    if need_log_t:
        grad_log_t = -(d_logits * saved["logits"]).sum()
    return (grad_x if need_x else None), grad_p, grad_w, grad_log_t


class BlockedBranches(torch.autograd.Function):
    """:class:`.reference.FusedBranches` for eager CPU code: the same maths, computed a block of samples at a time.

    Forward reads ``x`` from memory once (:func:`blocked_forward`); backward (:func:`branch_backward` with
    :func:`blocked_backward`) reads it once more. Arguments and returns as :class:`.reference.FusedBranches`.
    """

    @staticmethod
    def forward(ctx, x, p, weight, log_temperature, eps: float, branches: tuple[bool, bool, bool, bool]):
        descriptors, attn, saved = blocked_forward(
            x, p, weight, log_temperature, eps, branches, need_p_grad=ctx.needs_input_grad[1]
        )
        ctx.branches, ctx.eps, ctx.keys = branches, eps, tuple(saved)
        ctx.save_for_backward(x, p, weight, log_temperature, *saved.values())
        return descriptors, attn

    @staticmethod
    def backward(ctx, grad_out, _grad_attn):
        x, p, weight, log_temperature, *rest = ctx.saved_tensors
        saved = dict(zip(ctx.keys, rest, strict=True))
        grads = branch_backward(
            blocked_backward, x, p, weight, log_temperature, saved, grad_out, ctx.eps, ctx.branches,
            tuple(ctx.needs_input_grad[:4]),
        )  # fmt: skip
        return (*grads, None, None)
