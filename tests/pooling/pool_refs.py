"""Float64 references for the pooling layers, written with plain torch ops, plus the layer configurations under test.

The references never call ``hybridpool.pooling.functional``: they restate each layer's definition so that a test
comparing a module to its reference checks the library against the maths, not against itself. They read a layer's
current parameters only through its public attributes (``GeM.p``, ``LSEPool.r``, ``temperature``, the attention
projections, ``HybridPool.mix_logits`` / ``blend`` / ``branches``).
"""

from __future__ import annotations

import math

import torch

from hybridpool.pooling import (
    AttentionPool,
    GeM,
    GlobalAvgPool,
    GlobalMaxPool,
    HybridPool,
    KMaxPool,
    LSEPool,
    QueryAttentionPool,
)

C = 8  # channels of the layers under test (divisible by the 2 heads of the multi-head configs)

ALL_BRANCHES = ("avg", "max", "gem", "lse", "kmax", "attn", "qattn")
HYBRID_BRANCH_KWARGS = {"gem": {"per_channel": True}, "kmax": {"k": 3}, "attn": {"heads": 2}, "qattn": {"heads": 2}}

# name -> (class, constructor kwargs besides channels)
LAYER_CONFIGS: dict[str, tuple[type, dict]] = {
    "avg": (GlobalAvgPool, {}),
    "max": (GlobalMaxPool, {}),
    "gem": (GeM, {}),
    "gem_fixed": (GeM, {"p": 2.5, "learn_p": False}),
    "gem_pc": (GeM, {"per_channel": True}),
    "gem_pc_fixed": (GeM, {"p": 4.0, "learn_p": False, "per_channel": True}),
    "lse": (LSEPool, {}),
    "lse_fixed": (LSEPool, {"r": 0.5, "learn_r": False}),
    "lse_pc": (LSEPool, {"per_channel": True}),
    "kmax_int": (KMaxPool, {"k": 3}),
    "kmax_frac": (KMaxPool, {"k": 0.25}),
    "attn": (AttentionPool, {}),
    "attn_mh": (AttentionPool, {"heads": 2, "temperature": 0.7, "learn_temperature": True}),
    "qattn_gap": (QueryAttentionPool, {"heads": 2}),
    "qattn_gap_1h": (QueryAttentionPool, {"temperature": 1.5}),
    "qattn_learned": (QueryAttentionPool, {"heads": 2, "query": "learned", "learn_temperature": True}),
}
HYBRID_CONFIGS: dict[str, tuple[type, dict]] = {
    f"hybrid_{mode}": (
        HybridPool,
        {"branches": ALL_BRANCHES, "mixing": mode, "gate_hidden": 8, "branch_kwargs": HYBRID_BRANCH_KWARGS},
    )
    for mode in ("scalar", "channel", "gate", "concat")
}
HYBRID_CONFIGS["hybrid_gate_gapinit"] = (
    HybridPool,
    {"branches": ("avg", "max", "gem", "attn"), "mixing": "gate", "init": "gap", "gate_hidden": 8},
)
HYBRID_CONFIGS["hybrid_channel_gapinit"] = (
    HybridPool,
    {"branches": ("max", "gem", "avg", "attn"), "mixing": "channel", "init": "gap"},
)
CONFIGS = {**LAYER_CONFIGS, **HYBRID_CONFIGS}


def build(name: str, channels: int = C, randomize: bool = True, seed: int = 0, **extra) -> torch.nn.Module:
    """The layer ``name`` of :data:`CONFIGS`; with ``randomize`` every parameter is set to non-trivial values."""
    cls, kwargs = CONFIGS[name]
    layer = cls(channels, **kwargs, **extra)
    if randomize:
        randomize_(layer, seed)
    return layer


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 1.0) -> torch.nn.Module:
    """Set every parameter to uniform values in ``[-scale/2, scale/2)`` (a blend parameter to 0.6)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if name.split(".")[-1] == "blend":
            param.fill_(0.6)
        else:
            param.copy_((torch.rand(param.shape, generator=gen, dtype=torch.float64) - 0.5) * scale)
    return module


def distinct_positive(*shape: int, seed: int = 0, low: float = 0.5, high: float = 1.5) -> torch.Tensor:
    """float64 values in ``[low, high)``, distinct and ``(high - low) / numel`` apart (no max / top-k ties)."""
    n = math.prod(shape)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).double()
    return (low + (high - low) * perm / n).reshape(shape)


# --- references -----------------------------------------------------------------------------------------------


def as_float64(value) -> torch.Tensor:
    """A Python number (without a float32 detour) or a tensor, as a detached float64 tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    return torch.tensor(value, dtype=torch.float64)


def _channel_param(value, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-channel value as float64 ``(1, C)`` (or ``()``) for broadcasting against ``(B, C)``."""
    v = as_float64(value)
    return v.reshape(1, -1) if v.dim() else v


def ref_softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    e = torch.exp(z - z.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def ref_avg(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x.sum((2, 3)) / (x.shape[2] * x.shape[3])


def ref_max(x: torch.Tensor) -> torch.Tensor:
    return x.double().flatten(2).max(2).values


def ref_gem(x: torch.Tensor, p, eps: float = 1e-6) -> torch.Tensor:
    x = x.double().clamp(min=eps).flatten(2)  # (B, C, N)
    p = _channel_param(p, x)
    p3 = p[..., None] if p.dim() else p
    return (x**p3).mean(2) ** (1.0 / p)


def ref_lse(x: torch.Tensor, r) -> torch.Tensor:
    x = x.double().flatten(2)
    r = _channel_param(r, x)
    r3 = r[..., None] if r.dim() else r
    top = x.max(2, keepdim=True).values
    return top[..., 0] + torch.log(torch.exp(r3 * (x - top)).mean(2)) / r


def ref_kmax(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.double().flatten(2).sort(2, descending=True).values[:, :, :k].mean(2)


def kmax_count(k: int | float, n: int) -> int:
    """The documented meaning of KMaxPool's k: an int count (capped at n), or a fraction of n (at least 1)."""
    return min(k, n) if isinstance(k, int) else max(1, min(n, round(k * n)))


def _attend(x: torch.Tensor, logits: torch.Tensor, temperature, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B, C, H, W), ``logits`` (B, heads, N) -> pooled (B, C), attention (B, heads, H, W); float64."""
    b, c, h, w = x.shape
    xf = x.double().reshape(b, c, h * w)
    attn = ref_softmax(logits / as_float64(temperature), dim=2)
    d = c // heads
    out = torch.empty(b, c, dtype=torch.float64)
    for k in range(heads):  # head k pools the k-th contiguous group of channels
        out[:, k * d : (k + 1) * d] = (xf[:, k * d : (k + 1) * d, :] * attn[:, k : k + 1, :]).sum(2)
    return out, attn.reshape(b, heads, h, w)


def ref_attention(x, weight, bias, temperature, heads) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial attention: logits = 1x1 projection ``weight (heads, C)`` of x, plus ``bias (heads,)`` if any."""
    b, c, h, w = x.shape
    xf = x.double().reshape(b, c, h * w)
    weight = weight.detach().double().reshape(heads, c)
    logits = torch.einsum("kc,bcn->bkn", weight, xf)
    if bias is not None:
        logits = logits + bias.detach().double()[None, :, None]
    return _attend(x, logits, temperature, heads)


def ref_query_attention(
    x, w_key, query_vec, temperature, heads, similarity="cosine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query attention with keys ``W_k x`` at every position and the query ``query_vec (B, C)``.

    ``similarity="dot"``: ``q_h . k_h / sqrt(d)``; ``"cosine"``: ``q_h . k_h / (|W_k,h^T q_h| |x_p|)``.
    """
    b, c, h, w = x.shape
    d = c // heads
    xf = x.double().reshape(b, c, h * w)
    wk = w_key.detach().double()
    keys = torch.einsum("oc,bcn->bon", wk, xf)  # (B, C, N): W_k x per position
    q = query_vec.double()
    dots = torch.stack(
        [(q[:, k * d : (k + 1) * d, None] * keys[:, k * d : (k + 1) * d, :]).sum(1) for k in range(heads)], dim=1
    )  # (B, heads, N)
    if similarity == "dot":
        return _attend(x, dots / math.sqrt(d), temperature, heads)
    u_norm = torch.stack([(q[:, k * d : (k + 1) * d] @ wk[k * d : (k + 1) * d]).norm(dim=1) for k in range(heads)], 1)
    x_norm = xf.norm(dim=1)  # (B, N)
    logits = dots / (u_norm[:, :, None].clamp_min(1e-12) * x_norm[:, None, :].clamp_min(1e-12))
    return _attend(x, logits, temperature, heads)


def ref_query_norm(g: torch.Tensor) -> torch.Tensor:
    """LayerNorm (no affine, eps 1e-5) of the GAP vector ``(B, C)``, taken after dividing it by its largest
    magnitude (so that its variance cannot overflow; LayerNorm is scale-invariant up to its eps)."""
    g = g / g.abs().amax(1, keepdim=True).clamp(min=1e-12)
    centred = g - g.mean(1, keepdim=True)
    return centred / torch.sqrt((centred**2).mean(1, keepdim=True) + 1e-5)


def query_of(layer: QueryAttentionPool, x: torch.Tensor) -> torch.Tensor:
    """The query ``(B, C)``: ``W_q LayerNorm(GAP(x)) + b_q``, or the learned vector."""
    b = x.shape[0]
    if layer.query_mode == "gap":
        wq, bq = layer.query.weight.detach().double(), layer.query.bias.detach().double()
        return ref_query_norm(ref_avg(x)) @ wq.T + bq
    return layer.query.detach().double().expand(b, -1)


def reference(layer: torch.nn.Module, x: torch.Tensor, gate_weights: torch.Tensor | None = None) -> torch.Tensor:
    """float64 reference output ``(B, C * feat_mult())`` of ``layer`` on the NCHW map ``x``.

    For a gate hybrid the per-sample weights ``(B, n)`` must be given (they come from its gating network).
    """
    if isinstance(layer, HybridPool):
        return ref_hybrid(layer, x, gate_weights)
    if isinstance(layer, GlobalAvgPool):
        return ref_avg(x)
    if isinstance(layer, GlobalMaxPool):
        return ref_max(x)
    if isinstance(layer, GeM):
        return ref_gem(x, layer.p, layer.eps)
    if isinstance(layer, LSEPool):
        return ref_lse(x, layer.r)
    if isinstance(layer, KMaxPool):
        return ref_kmax(x, kmax_count(layer.k, x.shape[2] * x.shape[3]))
    if isinstance(layer, AttentionPool):
        return ref_attention(x, layer.proj.weight, layer.proj.bias, layer.temperature, layer.heads)[0]  # bias: None
    if isinstance(layer, QueryAttentionPool):
        return ref_query_attention(
            x, layer.key, query_of(layer, x), layer.temperature, layer.heads, layer.similarity
        )[0]
    raise AssertionError(f"no reference for {type(layer).__name__}")


def ref_static_weights(layer: HybridPool) -> torch.Tensor:
    """Input-independent mixing weights: ``(n,)`` or ``(n, C)``, softmax over the branches, then the GAP blend."""
    logits = layer.mix_logits.detach().double()
    weights = ref_softmax(logits, dim=0)
    if hasattr(layer, "blend"):
        blend = float(layer.blend.detach())
        onehot = torch.zeros_like(weights)
        onehot[layer.branch_names.index("avg")] = 1.0
        weights = (1 - blend) * onehot + blend * weights
    return weights


def ref_hybrid(layer: HybridPool, x: torch.Tensor, gate_weights: torch.Tensor | None = None) -> torch.Tensor:
    desc = torch.stack([reference(branch, x) for branch in layer.branches.values()], dim=1)  # (B, n, C)
    if layer.mixing == "concat":
        return desc.flatten(1)
    if layer.mixing == "gate":
        if gate_weights is None:
            raise AssertionError("a gate hybrid's reference needs its per-sample weights")
        return (gate_weights.double()[:, :, None] * desc).sum(1)
    weights = ref_static_weights(layer)
    if layer.mixing == "scalar":
        return (weights[None, :, None] * desc).sum(1)
    return (weights[None] * desc).sum(1)  # channel: (n, C)


def layer_reference(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`reference`, taking a gate hybrid's per-sample weights from its own ``forward_with_extras``."""
    gate_weights = None
    if isinstance(layer, HybridPool) and layer.mixing == "gate":
        with torch.no_grad():
            gate_weights = layer.forward_with_extras(x.to(next(layer.parameters()).dtype))[1]["mix"]
    return reference(layer, x, gate_weights)
