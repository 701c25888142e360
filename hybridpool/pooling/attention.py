"""Attention pooling: spatial attention from a 1x1 projection, and query attention (SimPool / CLIP family).

Both return their attention maps ``(B, heads, H, W)`` through ``forward_with_extras`` and start as exact global
average pooling (zero-initialised logits give uniform attention), so they can replace GAP in a trained model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import functional as F
from ._base import PoolBase, check_channels, scale_free_layer_norm
from .kernels import pool_branches


def _logit_input(x: torch.Tensor) -> torch.Tensor:
    """Features for the attention logits: float16/bfloat16 are upcast so large activations cannot overflow."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _TemperatureMixin(PoolBase):
    def _init_temperature(self, temperature: float, learn_temperature: bool) -> None:
        if temperature <= 0:
            raise ValueError(f"{type(self).__name__}: temperature must be > 0, got {temperature}")
        log_t = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> torch.Tensor:
        """Softmax temperature ``()``, kept > 0 as ``exp(log_temperature)``."""
        return self.log_temperature.exp()

    def _check_heads(self, channels: int, heads: int) -> None:
        if heads < 1 or channels % heads:
            raise ValueError(f"{type(self).__name__}: heads must divide channels ({channels}), got heads={heads}")


class AttentionPool(_TemperatureMixin):
    """Spatial attention pooling.

    Logits ``(B, heads, H, W)`` come from a 1x1 projection of the features; a softmax over the ``H*W`` positions
    (with a temperature) weights a sum per channel. With ``heads > 1``, head ``k`` pools the ``k``-th group of
    ``C / heads`` channels.

    Args:
        channels: input channels ``C`` (required).
        heads: attention maps; must divide ``C``.
        temperature: initial softmax temperature.
        learn_temperature: learn the temperature (as its log).
    """

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        flatten: bool = True,
        input_fmt: str = "NCHW",
    ) -> None:
        check_channels(channels, "AttentionPool", required=True)
        super().__init__(channels, flatten, input_fmt)
        self._check_heads(channels, heads)
        self.heads = heads
        self.proj = nn.Conv2d(channels, heads, kernel_size=1, bias=False)  # a bias cancels in the softmax
        nn.init.zeros_(self.proj.weight)
        self._init_temperature(temperature, learn_temperature)

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # the attention branch of the fused hybrid kernels: projection, softmax and weighted sum in one pass per
        # sample on a CPU (the native kernel for float32), whole-tensor ops on a GPU or under torch.compile;
        # the same values as F.attention_pool(x, conv2d(x, proj.weight), temperature)
        descriptors, attn = pool_branches(
            x, (False, False, False, True), weight=self.proj.weight, log_temperature=self.log_temperature
        )
        return descriptors[:, 0], ({"attn": attn} if need_extras else {})

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        return {"temperature": float(self.temperature)}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}"


class QueryAttentionPool(_TemperatureMixin):
    """One query attending over the ``H*W`` positions (the SimPool / CLIP attention-pool family).

    The query is learned (``query="learned"``) or derived from the sample's own layer-normalised GAP vector
    (``query="gap"``, as in SimPool); keys are a linear projection of the features, values the features
    themselves, split into ``heads`` channel groups with scaled dot-product logits. Only per-sample statistics
    are used (no batch-wide normalisation), and ``B = 1`` is never squeezed away.

    The key projection is applied to the query instead of to every position (``q . (W_k x) = (W_k^T q) . x``), so
    the cost is ``O(C^2 + C H W)`` per sample rather than ``O(C^2 H W)``.

    Logits (``similarity``):

    - ``"cosine"`` (default): ``cos(W_k^T q, x_p) / temperature`` for each position ``p`` (``x_p``: the ``(C,)``
      feature there), bounded by ``1 / temperature`` whatever the scale of the features or of ``q``. With the
      dot product, a query from a zero-initialised ``C x C`` layer grows by about ``lr * C`` per Adam step, the
      logits with it, and the softmax saturates on one position within an epoch (measured on frozen
      MobileNetV2 features of CUB: attention entropy 0.01 of its maximum after one epoch, test accuracy far
      below GAP's; ``paper/``).
    - ``"dot"``: scaled dot product ``q . W_k x_p / sqrt(C / heads) / temperature`` (the transformer form).

    Args:
        channels: input channels ``C`` (required).
        heads: heads; must divide ``C``.
        query: ``"gap"`` (``q = W_q LayerNorm(GAP(x)) + b_q``) or ``"learned"`` (one learned vector ``(C,)``).
        similarity: ``"cosine"`` or ``"dot"`` (above).
        temperature: softmax temperature; the default 0.1 bounds cosine logits to ``[-10, 10]``.
        learn_temperature: learn the temperature.
    """

    QUERIES = ("gap", "learned")
    SIMILARITIES = ("cosine", "dot")

    def __init__(
        self,
        channels: int,
        heads: int = 1,
        query: str = "gap",
        similarity: str = "cosine",
        temperature: float = 0.1,
        learn_temperature: bool = False,
        flatten: bool = True,
        input_fmt: str = "NCHW",
    ) -> None:
        check_channels(channels, "QueryAttentionPool", required=True)
        super().__init__(channels, flatten, input_fmt)
        self._check_heads(channels, heads)
        if query not in self.QUERIES:
            raise ValueError(f"QueryAttentionPool: unknown query {query!r}; accepted: {', '.join(self.QUERIES)}")
        if similarity not in self.SIMILARITIES:
            raise ValueError(
                f"QueryAttentionPool: unknown similarity {similarity!r}; accepted: {', '.join(self.SIMILARITIES)}"
            )
        self.similarity = similarity
        self.heads = heads
        self.query_mode = query
        self.key = nn.Parameter(torch.empty(channels, channels))
        nn.init.kaiming_uniform_(self.key, a=math.sqrt(5))
        if query == "gap":
            self.query = nn.Linear(channels, channels)
            nn.init.zeros_(self.query.weight)  # zero query -> uniform attention -> exactly GAP at init
            nn.init.zeros_(self.query.bias)
        else:
            self.query = nn.Parameter(torch.zeros(channels))
        self._init_temperature(temperature, learn_temperature)

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b, c, h, w = x.shape
        d = c // self.heads
        if self.query_mode == "gap":
            gap = F.global_avg_pool(x).to(self.query.weight.dtype)  # (B, C)
            q = self.query(scale_free_layer_norm(gap))  # per-sample norm: q does not scale with x
        else:
            q = self.query.expand(b, c)
        work = _logit_input(x)
        q = q.to(work.dtype).view(b, self.heads, d)
        key = self.key.to(work.dtype).view(self.heads, d, c)
        u = torch.einsum("bhd,hdc->bhc", q, key)  # (B, heads, C): W_k^T q per head
        positions = work.flatten(2)  # (B, C, H*W)
        if self.similarity == "cosine":  # a zero query (at init) gives zero logits: uniform attention, GAP
            u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            positions = positions / positions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            u = u / math.sqrt(d)
        logits = torch.matmul(u, positions).view(b, self.heads, h, w)  # (B, heads, H, W)
        pooled, attn = F.attention_pool(x, logits, self.temperature)
        return pooled, ({"attn": attn} if need_extras else {})

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        return {"temperature": float(self.temperature)}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, query={self.query_mode!r}, similarity={self.similarity!r}"
