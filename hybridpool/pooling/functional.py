"""Functional global pooling: pure tensor functions over ``(B, C, H, W)`` feature maps.

Every function reduces the spatial dimensions of one sample on its own (no statistic is shared across the
batch) and accepts any ``B >= 1``, ``H, W >= 1`` and either contiguous or channels_last memory.

References: GeM (Radenovic, Tolias & Chum, TPAMI 2018); log-sum-exp pooling (Pinheiro & Collobert, CVPR 2015);
global k-max pooling (arXiv 1911.07344); attention pooling (e.g. Touvron et al., "Augmenting CNNs with attention-based
pooling", 2021, and the CLIP / SimPool query attention family).
"""

from __future__ import annotations

import torch

from .kernels import lse_pool_rows, pool_branches

__all__ = [
    "attention_entropy",
    "attention_pool",
    "gem",
    "global_avg_pool",
    "global_max_pool",
    "kmax_pool",
    "lse_pool",
    "resolve_k",
    "spatial_softmax",
]


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling: ``(B, C, H, W)`` -> ``(B, C)``."""
    return x.mean((2, 3))


def global_max_pool(x: torch.Tensor) -> torch.Tensor:
    """Global max pooling: ``(B, C, H, W)`` -> ``(B, C)``; ties share the gradient equally."""
    return x.amax((2, 3))


def _channel_view(value: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A scalar ``()`` or per-channel ``(C,)`` parameter as a tensor broadcastable against ``(B, C, H, W)``."""
    value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if value.dim() == 0:
        return value
    if value.dim() == 1 and value.shape[0] == x.shape[1]:
        return value.view(1, -1, 1, 1)
    raise ValueError(f"expected a scalar or a per-channel ({x.shape[1]},) parameter, got shape {tuple(value.shape)}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalized-mean (GeM) pooling ``(mean_{h,w} clamp(x, eps)^p)^(1/p)``.

    Computed as ``m * (mean (x / m)^p)^(1/p)`` with ``m`` the per-channel max, so ``x^p`` never overflows (also in
    float16/bfloat16, which are computed in float32); CPU code (the C kernel's op ``hybridpool::branches`` in
    float32, eager or compiled; blocks of samples in float64) recomputes ``(x / m)^(p-1)`` in backward, GPU code
    keeps it (see :mod:`hybridpool.pooling.kernels`).

    Args:
        x: ``(B, C, H, W)`` floating feature map.
        p: exponent ``>= 1``, a float, a scalar tensor ``()`` or a per-channel tensor ``(C,)``; differentiable.
        eps: lower clamp that keeps the power defined for non-positive inputs.

    Returns:
        ``(B, C)`` in ``x.dtype``. ``p = 1`` is average pooling of ``clamp(x, eps)``; ``p -> inf`` tends to max.
    """
    p_tensor = torch.as_tensor(p, dtype=_compute_dtype(x.dtype), device=x.device)
    if p_tensor.dim() > 1 or (p_tensor.dim() == 1 and p_tensor.shape[0] != x.shape[1]):
        raise ValueError(f"GeM p must be a scalar or per-channel ({x.shape[1]},), got shape {tuple(p_tensor.shape)}")
    if isinstance(p, (int, float)) and p < 1:  # tensors are checked where they are made (GeM keeps p >= 1)
        raise ValueError(f"GeM needs p >= 1, got {p}")
    return pool_branches(x, (False, False, True, False), p=p_tensor, eps=eps)[0][:, 0]


def lse_pool(x: torch.Tensor, r: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Log-sum-exp pooling ``(1/r) log(mean_{h,w} exp(r x))``, stabilised by the max.

    float32 (and half precision, computed in float32) on a CPU runs the native kernel's op ``hybridpool::lse`` (one
    pass per row, eager and compiled); other devices and dtypes use ``torch.logsumexp``.

    Args:
        x: ``(B, C, H, W)``.
        r: sharpness ``> 0``, scalar or per-channel ``(C,)``; small ``r`` tends to the mean, large ``r`` to the max.

    Returns:
        ``(B, C)``.
    """
    work = x.to(_compute_dtype(x.dtype))
    r_b = _channel_view(r, work)
    return lse_pool_rows(work.flatten(2), r_b.flatten() if r_b.dim() else r_b).to(x.dtype)


def resolve_k(k: int | float, n: int) -> int:
    """Number of values that k-max pooling averages over ``n`` positions.

    ``k`` is an absolute count (int ``>= 1``, capped at ``n``) or a fraction of ``n`` (float in ``(0, 1]``, at least 1).
    """
    if isinstance(k, bool):
        raise TypeError("k must be an int or a float, got a bool")
    if isinstance(k, int):
        if k < 1:
            raise ValueError(f"k must be >= 1 when given as a count, got {k}")
        return min(k, n)
    if isinstance(k, float):
        if not 0.0 < k <= 1.0:
            raise ValueError(f"k as a fraction of H*W must lie in (0, 1], got {k}")
        return max(1, min(n, round(k * n)))
    raise TypeError(f"k must be an int count or a float fraction, got {type(k).__name__}")


def kmax_pool(x: torch.Tensor, k: int | float = 0.1) -> torch.Tensor:
    """Global k-max pooling: the mean of the ``k`` largest values of each channel.

    Args:
        x: ``(B, C, H, W)``.
        k: count or fraction of ``H*W`` (see :func:`resolve_k`); ``k=1`` is max, ``k=H*W`` is average pooling.

    Returns:
        ``(B, C)``.
    """
    n = int(x.shape[2]) * int(x.shape[3])  # a plain int also while an exporter traces shapes
    kk = resolve_k(k, n)
    flat = x.flatten(2)
    if kk == n:
        return flat.mean(2)
    if kk == 1:
        return flat.amax(2)
    return flat.topk(kk, dim=2, sorted=False).values.mean(2)


def spatial_softmax(logits: torch.Tensor, temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Softmax over the positions of each map: ``(B, K, H, W)`` -> ``(B, K, H, W)`` summing to 1 per ``(b, k)``."""
    b, k, h, w = logits.shape
    return torch.softmax(logits.flatten(2) / temperature, dim=2).view(b, k, h, w)


def attention_pool(
    x: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor | float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention-weighted spatial sum.

    Args:
        x: ``(B, C, H, W)`` features.
        logits: ``(B, heads, H, W)`` attention logits; ``C`` must be divisible by ``heads``; head ``k`` pools the
            ``k``-th contiguous group of ``C / heads`` channels.
        temperature: softmax temperature ``> 0``.

    Returns:
        ``(pooled (B, C), attn (B, heads, H, W))``; constant logits give average pooling.
    """
    b, c, h, w = x.shape
    heads = logits.shape[1]
    if logits.shape[0] != b or logits.shape[2:] != x.shape[2:]:
        raise ValueError(f"logits {tuple(logits.shape)} do not match features {tuple(x.shape)}")
    if c % heads:
        raise ValueError(f"channels ({c}) must be divisible by heads ({heads})")
    attn = spatial_softmax(logits, temperature).to(x.dtype)
    # (B, heads, C/heads, HW) @ (B, heads, HW, 1) -> (B, heads, C/heads, 1)
    grouped = x.reshape(b, heads, c // heads, h * w)
    pooled = torch.matmul(grouped, attn.reshape(b, heads, h * w, 1)).reshape(b, c)
    return pooled, attn


def attention_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of attention maps ``(B, heads, H, W)`` -> ``(B, heads)``; ``log(H*W)`` means uniform."""
    flat = attn.flatten(2).float()
    return -(flat * flat.clamp_min(1e-12).log()).sum(2)
