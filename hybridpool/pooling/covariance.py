"""Second-order (covariance) pooling: the bilinear CNN and iSQRT-COV family, for fine-grained recognition.

A first-order pool keeps one number per channel; a second-order pool keeps how the channels vary *together* over the
positions: the ``d x d`` (co)variance matrix of the sample's ``d``-channel feature vectors at its ``H * W`` positions.

- Bilinear CNN (Lin, RoyChowdhury & Maji, "Bilinear CNN Models for Fine-grained Visual Recognition", ICCV 2015):
  the average outer product of the features, then an element-wise signed square root and L2 normalisation
  (``normalization="signed_sqrt"``; their descriptor is uncentred: ``centered=False``).
- iSQRT-COV (Li, Xie, Wang & Gao, "Towards Faster Training of Global Covariance Pooling Networks by Iterative Matrix
  Square Root Normalization", CVPR 2018): a 1x1 convolution reduces the channels (to 256 there, with BatchNorm and
  ReLU), the centred covariance is normalised by its matrix square root, computed with a few Newton-Schulz
  iterations (matrix products only, so it runs on a GPU and backpropagates without an eigendecomposition): the
  covariance is divided by its trace first (so that the iteration converges) and the result multiplied by the square
  root of the trace afterwards (``normalization="matrix_sqrt"``, the default).

:class:`CovariancePool` does both, after an optional learned 1x1 reduction ``C -> d`` that keeps the head small: the
output is the upper triangle of the normalised matrix, ``d * (d + 1) / 2`` features (2080 for ``d = 64``, instead of
``C * (C + 1) / 2 = 819840`` for MobileNetV2's 1280 channels). The reduction has a bias but no BatchNorm: a pooling
layer's output for one sample never depends on the other samples of the batch.

Because its width is not a multiple of ``C``, :meth:`CovariancePool.feat_mult` is the exact ratio, a
:class:`fractions.Fraction` when it is not a whole number (``13/8`` for ``C = 1280, d = 64``): size the next layer as
``int(C * feat_mult())`` or read :attr:`CovariancePool.out_features`; ``int(feat_mult())`` of a fractional ratio
raises a ``TypeError`` instead of truncating. It cannot be a :class:`~hybridpool.pooling.HybridPool` branch (every
branch must return ``(B, C)``).

Numerics: the covariance and everything after it are computed in float32 for float16/bfloat16 inputs (float64 stays
float64) and returned in the input's dtype. ``eps * I`` is added to the covariance before the matrix square root, so
a covariance of zero (``H * W == 1``, or a constant map) gives a finite output and gradient, never NaN.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn

from ._base import PoolBase, check_channels

__all__ = [
    "NORMALIZATIONS",
    "CovariancePool",
    "WidthRatio",
    "covariance",
    "newton_schulz_sqrt",
    "signed_sqrt",
    "upper_triangle",
]

NORMALIZATIONS = ("matrix_sqrt", "signed_sqrt", "none")


class WidthRatio(Fraction):
    """An output width over the input channels ``C`` that is not a whole number (e.g. ``13/8``).

    Exact arithmetic works as with any :class:`~fractions.Fraction` (``int(1280 * WidthRatio(13, 8)) == 2080``),
    but ``int()`` of the ratio itself raises a ``TypeError``, so code that rounds ``feat_mult()`` before
    multiplying by ``C`` fails loudly instead of building a layer of the wrong width.
    """

    def __int__(self) -> int:
        raise TypeError(
            f"feat_mult() = {self} is not a whole number: this layer's output width is not a multiple of its input "
            f"channels C; compute the width as int(C * feat_mult()) (exact) or read the layer's out_features"
        )

    __trunc__ = __int__


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16/float32, float64 for float64: the dtype the second-order statistics use."""
    return torch.promote_types(dtype, torch.float32)


# ============================================================================================ functional
def covariance(x: torch.Tensor, centered: bool = True) -> torch.Tensor:
    """Per-sample second moment of the feature vectors at the ``N`` positions.

    Args:
        x: ``(B, d, N)``: ``d`` channels at ``N >= 1`` positions.
        centered: subtract the sample's mean vector first (the covariance, normalised by ``N``, not ``N - 1``), or
            not (the average outer product of the bilinear CNN).

    Returns:
        ``(B, d, d)``, symmetric positive semi-definite: ``(1/N) sum_n (x_n - m)(x_n - m)^T`` (``m = 0`` uncentred).
        Zero for ``N == 1`` when centred.
    """
    if centered:
        x = x - x.mean(-1, keepdim=True)
    return torch.bmm(x, x.transpose(-1, -2)) / x.shape[-1]


def newton_schulz_sqrt(a: torch.Tensor, iterations: int = 5, eps: float = 1e-5) -> torch.Tensor:
    """Approximate matrix square root of symmetric PSD matrices by coupled Newton-Schulz iterations (iSQRT-COV).

    ``A' = A + eps * I`` is divided by its trace ``t`` (its eigenvalues then lie in ``(0, 1]``, where the iteration
    converges), iterated from ``Y_0 = A' / t``, ``Z_0 = I`` as ``T = (3I - Z Y) / 2``, ``Y <- Y T``, ``Z <- T Z``
    (``Y -> (A'/t)^(1/2)``, ``Z -> (A'/t)^(-1/2)``; the last step updates ``Y`` only), and multiplied by ``sqrt(t)``.
    Every iterate is a polynomial in ``A'``: an eigenvalue ``lambda`` of ``A'`` becomes
    ``sqrt(t) * y_k(lambda / t)`` of the scalar iteration, so small eigenvalues (relative to the trace) converge
    slowest; a few iterations are the approximation iSQRT-COV trains with (5 is its usual setting).

    Args:
        a: ``(B, d, d)``, symmetric positive semi-definite (a covariance).
        iterations: Newton-Schulz steps, ``>= 1``.
        eps: added to the diagonal first, ``> 0``; keeps the trace positive for ``A = 0``.

    Returns:
        ``(B, d, d)``, ``~ (A + eps I)^(1/2)``, in ``a``'s dtype.
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    a = a + eps * eye
    trace = a.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]  # (B, 1, 1), >= d * eps > 0
    y = a / trace
    half3 = 1.5 * eye
    t = half3 - 0.5 * y  # the first T, from Z_0 = I (no product)
    if iterations == 1:
        return torch.bmm(y, t) * trace.sqrt()
    y, z = torch.bmm(y, t), t
    for _ in range(iterations - 2):
        t = torch.baddbmm(half3, z, y, alpha=-0.5)  # (3I - Z Y) / 2 in one call
        y, z = torch.bmm(y, t), torch.bmm(t, z)
    y = torch.bmm(y, torch.baddbmm(half3, z, y, alpha=-0.5))  # the last step: Y only
    return y * trace.sqrt()


def signed_sqrt(a: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Element-wise signed square root ``sign(a) * (sqrt(|a| + eps) - sqrt(eps))`` (bilinear CNN), any shape.

    Within ``sqrt(eps)`` of ``sign(a) * sqrt(|a|)``; zero at zero, continuous, and with a finite gradient
    ``1 / (2 sqrt(eps))`` there (``sqrt(|a|)`` has an infinite one).
    """
    root_eps = eps**0.5
    return torch.sign(a) * (torch.sqrt(a.abs() + eps) - root_eps)


def upper_triangle(a: torch.Tensor) -> torch.Tensor:
    """``(B, d, d)`` -> ``(B, d * (d + 1) / 2)``: the entries ``(i, j)``, ``i <= j``, row by row
    (``(0, 0), (0, 1), ..., (0, d-1), (1, 1), ...``); each off-diagonal entry of a symmetric matrix once."""
    d = a.shape[-1]
    rows, cols = torch.triu_indices(d, d, device=a.device)
    return a.flatten(-2)[..., rows * d + cols]


# ============================================================================================ module
class CovariancePool(PoolBase):
    """Second-order pooling: ``(B, C, H, W)`` -> ``(B, d * (d + 1) / 2)``, the upper triangle of a normalised
    ``d x d`` covariance of the (reduced) features over the ``H * W`` positions (see the module docstring).

    Steps: (1) a 1x1 convolution ``C -> d`` with a bias, weight ``(d, C, 1, 1)`` (``reduce_dim``; none when
    ``reduce_dim`` is ``None`` or 0, then ``d = C``); (2) ReLU (``relu``); (3) the per-sample covariance
    ``(B, d, d)`` over the ``H * W`` positions (``centered``); (4) ``normalization``; (5) the upper triangle.

    Args:
        channels: input channels ``C`` (required: it sizes the reduction, and ``d = C`` without one).
        reduce_dim: ``d``, the channels after the learned 1x1 reduction (a positive int; 64 keeps the head at
            2080 inputs); ``None`` or 0: no reduction, the covariance of the ``C`` input channels.
        relu: ReLU on the features whose covariance is taken (after the reduction when there is one), as in
            iSQRT-COV.
        centered: subtract each sample's mean feature vector (a covariance); ``False``: the average outer product
            (the bilinear CNN's descriptor).
        normalization: ``"matrix_sqrt"`` (iSQRT-COV: ``(cov + eps I)^(1/2)`` by ``iterations`` Newton-Schulz steps
            with trace pre-normalisation and ``sqrt(trace)`` post-compensation), ``"signed_sqrt"`` (bilinear CNN:
            :func:`signed_sqrt` of every entry, then the output vector scaled to unit L2 norm; a zero vector stays
            zero) or ``"none"`` (the covariance itself; ``None`` is read as ``"none"``, as a spec's
            ``cov(normalization=none)`` parses to it).
        iterations: Newton-Schulz steps for ``"matrix_sqrt"`` (``>= 1``).
        eps: ``> 0``; ``"matrix_sqrt"``: the ``eps * I`` added to the covariance (absolute, in the units of the
            squared features); ``"signed_sqrt"``: the smoothing of the square root at 0. Unused by ``"none"``.
        flatten: ``False`` returns ``(B, d * (d + 1) / 2, 1, 1)``.
        input_fmt: ``"NCHW"`` or ``"NHWC"`` (a ``(B, H, W, C)`` input).

    ``forward_with_extras`` also returns ``extras["cov"]``: ``(B, d, d)``, the normalised symmetric matrix whose
    upper triangle is the output (before the L2 scaling of ``"signed_sqrt"``), in the input's dtype.

    The learnable parameters are those of the reduction, ``reduce.weight`` ``(d, C, 1, 1)`` (a matrix) and
    ``reduce.bias`` ``(d,)``; without a reduction the layer has none. With ``centered=True`` and ``relu=False`` the
    bias cancels in the covariance (it shifts every position alike) and gets a zero gradient.
    """

    def __init__(
        self,
        channels: int,
        reduce_dim: int | None = 64,
        relu: bool = True,
        centered: bool = True,
        normalization: str | None = "matrix_sqrt",
        iterations: int = 5,
        eps: float = 1e-5,
        flatten: bool = True,
        input_fmt: str = "NCHW",
    ) -> None:
        check_channels(channels, "CovariancePool", required=True)
        super().__init__(channels, flatten, input_fmt)
        if reduce_dim is not None and (
            isinstance(reduce_dim, bool) or not isinstance(reduce_dim, int) or reduce_dim < 0
        ):
            raise ValueError(
                f"CovariancePool: reduce_dim must be a positive int (the channels after the 1x1 reduction) or "
                f"None/0 (no reduction, d = C = {channels}); got {reduce_dim!r}"
            )
        if normalization is None:  # what a spec's "normalization=none" and a config's null read as
            normalization = "none"
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"CovariancePool: unknown normalization {normalization!r}; accepted: {', '.join(NORMALIZATIONS)}"
            )
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(
                f"CovariancePool: iterations must be an int >= 1 (Newton-Schulz steps), got {iterations!r}"
            )
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"CovariancePool: eps must be a number > 0, got {eps!r}")
        self.reduce_dim = reduce_dim or None  # 0 -> None: one spelling of "no reduction"
        self.dim = self.reduce_dim or channels
        self.reduce = nn.Conv2d(channels, self.reduce_dim, kernel_size=1) if self.reduce_dim else None
        self.relu = bool(relu)
        self.centered = bool(centered)
        self.normalization = normalization
        self.iterations = iterations
        self.eps = float(eps)

    @property
    def out_features(self) -> int:
        """The output width ``d * (d + 1) / 2``."""
        return self.dim * (self.dim + 1) // 2

    def feat_mult(self) -> int | WidthRatio:
        """``out_features / C``, exactly: an int when ``C`` divides ``d * (d + 1) / 2``, else a :class:`WidthRatio`
        (``int(C * feat_mult()) == out_features``; ``int(feat_mult())`` of a fractional ratio raises)."""
        ratio = Fraction(self.out_features, self.channels)
        return int(ratio) if ratio.denominator == 1 else WidthRatio(ratio)

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: validated ``(B, C, H, W)`` -> the normalised ``(B, d, d)`` matrix, in the work dtype (float32 for
        half-precision input, else ``x``'s), before the L2 scaling of ``"signed_sqrt"``."""
        work = _work_dtype(x.dtype)
        x = x.to(work)
        if self.reduce is not None:
            bias = None if self.reduce.bias is None else self.reduce.bias.to(work)
            x = nn.functional.conv2d(x, self.reduce.weight.to(work), bias)  # (B, d, H, W)
        if self.relu:
            x = torch.relu(x)
        cov = covariance(x.flatten(2), self.centered)  # (B, d, d)
        if self.normalization == "matrix_sqrt":
            return newton_schulz_sqrt(cov, self.iterations, self.eps)
        if self.normalization == "signed_sqrt":
            return signed_sqrt(cov, self.eps)
        return cov

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x``: ``(B, C, H, W)`` -> ``((B, d * (d + 1) / 2), {"cov": (B, d, d)} if need_extras)``."""
        m = self.matrix(x)
        out = upper_triangle(m)
        if self.normalization == "signed_sqrt":
            out = nn.functional.normalize(out, dim=-1)
        return out.to(x.dtype), ({"cov": m.to(x.dtype)} if need_extras else {})

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"reduce_dim={self.reduce_dim}", f"normalization={self.normalization!r}"]
        if self.normalization == "matrix_sqrt":
            parts.append(f"iterations={self.iterations}")
        parts += [f"relu={self.relu}", f"centered={self.centered}", f"eps={self.eps:g}"]
        return ", ".join(p for p in parts if p)
