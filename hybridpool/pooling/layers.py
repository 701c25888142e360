"""Single global pooling layers: average, max, GeM, log-sum-exp and k-max.

Each layer is a thin module over its function in :mod:`hybridpool.pooling.functional`; see there for the maths and
references. Learnable parameters (GeM's ``p``, LSE's ``r``) are reparameterised so that they stay in range with a
gradient everywhere: ``p = 1 + softplus(raw)``, ``r = softplus(raw)``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import functional as F
from ._base import PoolBase, check_channels, positive_from_raw, raw_from_positive

__all__ = ["GeM", "GlobalAvgPool", "GlobalMaxPool", "KMaxPool", "LSEPool"]


class GlobalAvgPool(PoolBase):
    """Global average pooling (GAP): ``(B, C, H, W)`` -> ``(B, C)``."""

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.global_avg_pool(x), {}


class GlobalMaxPool(PoolBase):
    """Global max pooling: ``(B, C, H, W)`` -> ``(B, C)``."""

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.global_max_pool(x), {}


class _LearnablePositive(PoolBase):
    """A pooling layer with one positive parameter, scalar or per channel, learnable or fixed."""

    _minimum = 0.0
    _name = "value"

    def __init__(
        self,
        channels: int | None,
        init: float,
        learnable: bool,
        per_channel: bool,
        flatten: bool,
        input_fmt: str,
    ) -> None:
        super().__init__(channels, flatten, input_fmt)
        if per_channel:
            check_channels(channels, type(self).__name__ + "(per_channel=True)", required=True)
        shape = (channels,) if per_channel else ()
        self.per_channel = per_channel
        if learnable:
            raw = raw_from_positive(init, self._minimum).expand(shape).clone()
            self.raw = nn.Parameter(raw)
        else:
            if init < self._minimum or (self._minimum == 0.0 and init <= 0):
                raise ValueError(f"{type(self).__name__}: {self._name} must be > {self._minimum}, got {init}")
            self.register_buffer("fixed", torch.full(shape, float(init)))

    @property
    def value(self) -> torch.Tensor:
        """The current parameter: ``()`` or ``(C,)``."""
        if hasattr(self, "raw"):
            return positive_from_raw(self.raw, self._minimum)
        return self.fixed

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        v = self.value.float()
        out = {f"{self._name}": float(v.mean())}
        if v.dim():
            out[f"{self._name}_std"] = float(v.std(unbiased=False))
        return out

    def extra_repr(self) -> str:
        learn = "learnable" if hasattr(self, "raw") else "fixed"
        shape = "per-channel" if self.per_channel else "scalar"
        mean = float(self.value.detach().float().mean())
        return ", ".join(s for s in (super().extra_repr(), f"{self._name}={mean:.3g} ({shape}, {learn})") if s)


class GeM(_LearnablePositive):
    """Generalized-mean pooling with a learnable exponent ``p >= 1`` (Radenovic et al., TPAMI 2018).

    Args:
        channels: input channels ``C``; required for ``per_channel=True``.
        p: initial exponent (> 1 when learnable; >= 1 when fixed). 3 is the usual start.
        learn_p: learn ``p`` (reparameterised as ``1 + softplus(raw)``) or keep it fixed.
        per_channel: one ``p`` per channel ``(C,)`` instead of one scalar.
        eps: clamp for non-positive inputs.
    """

    _minimum = 1.0
    _name = "p"

    def __init__(
        self,
        channels: int | None = None,
        p: float = 3.0,
        learn_p: bool = True,
        per_channel: bool = False,
        eps: float = 1e-6,
        flatten: bool = True,
        input_fmt: str = "NCHW",
    ) -> None:
        super().__init__(channels, p, learn_p, per_channel, flatten, input_fmt)
        self.eps = eps

    @property
    def p(self) -> torch.Tensor:
        """Current exponent, ``()`` or ``(C,)``."""
        return self.value

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.gem(x, self.p, self.eps), {}


class LSEPool(_LearnablePositive):
    """Log-sum-exp pooling with learnable sharpness ``r > 0`` (Pinheiro & Collobert, CVPR 2015).

    Args:
        channels: input channels ``C``; required for ``per_channel=True``.
        r: initial sharpness; small ``r`` behaves like average pooling, large ``r`` like max pooling.
        learn_r: learn ``r`` (reparameterised as ``softplus(raw)``) or keep it fixed.
        per_channel: one ``r`` per channel.
    """

    _minimum = 0.0
    _name = "r"

    def __init__(
        self,
        channels: int | None = None,
        r: float = 1.0,
        learn_r: bool = True,
        per_channel: bool = False,
        flatten: bool = True,
        input_fmt: str = "NCHW",
    ) -> None:
        super().__init__(channels, r, learn_r, per_channel, flatten, input_fmt)

    @property
    def r(self) -> torch.Tensor:
        """Current sharpness, ``()`` or ``(C,)``."""
        return self.value

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.lse_pool(x, self.r), {}


class KMaxPool(PoolBase):
    """Global k-max pooling: the mean of the ``k`` largest activations per channel (arXiv 1911.07344).

    Args:
        channels: input channels (optional).
        k: an int count, or a float fraction of ``H*W`` in ``(0, 1]``; ``k=1`` is max pooling, ``k=1.0`` is GAP.
    """

    def __init__(
        self, channels: int | None = None, k: int | float = 0.1, flatten: bool = True, input_fmt: str = "NCHW"
    ) -> None:
        super().__init__(channels, flatten, input_fmt)
        F.resolve_k(k, 1)  # validates type and range now, not at the first batch
        self.k = k

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.kmax_pool(x, self.k), {}

    def extra_repr(self) -> str:
        return ", ".join(s for s in (super().extra_repr(), f"k={self.k}") if s)
