"""CovariancePool (second-order pooling: bilinear CNN, iSQRT-COV) against float64 references written here.

The references restate the layer's definition with other torch ops (``torch.cov``, ``torch.linalg.eigh``, a loop
over the upper triangle) and never call ``hybridpool.pooling.covariance``; they read the layer's parameters only
through ``layer.reduce.weight`` / ``layer.reduce.bias``.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

from hybridpool.models import Classifier
from hybridpool.pooling import (
    CovariancePool,
    HybridPool,
    create_pool,
    pool_config_keys,
    pool_factory,
    pool_spec,
    pooling_parameters,
)

NORMALIZATIONS = ("matrix_sqrt", "signed_sqrt", "none")


def fmap(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@torch.no_grad()
def randomize_(layer: CovariancePool, seed: int = 0) -> CovariancePool:
    """Reduction weights and biases uniform in [-0.5, 0.5): non-trivial, and ReLU keeps about half the values."""
    gen = torch.Generator().manual_seed(seed)
    for p in layer.parameters():
        p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) - 0.5)
    return layer


# --- float64 references -----------------------------------------------------------------------------------------


def ref_features(layer: CovariancePool, x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) -> the features whose covariance is taken, (B, d, N) float64."""
    f = x.double().flatten(2)
    if layer.reduce is not None:
        w = layer.reduce.weight.detach().double().flatten(1)  # (d, C)
        f = torch.einsum("dc,bcn->bdn", w, f) + layer.reduce.bias.detach().double()[None, :, None]
    return f.clamp(min=0) if layer.relu else f


def ref_second_moment(f: torch.Tensor, centered: bool) -> torch.Tensor:
    """(B, d, N) -> (B, d, d): torch.cov (population, correction=0) per sample, or the mean outer product."""
    if centered:
        return torch.stack([torch.cov(s, correction=0).reshape(s.shape[0], s.shape[0]) for s in f])
    return torch.stack([sum(torch.outer(s[:, n], s[:, n]) for n in range(s.shape[1])) / s.shape[1] for s in f])


def ref_sqrtm(a: torch.Tensor, eps: float) -> torch.Tensor:
    """(A + eps I)^(1/2) by eigendecomposition."""
    vals, vecs = torch.linalg.eigh(a + eps * torch.eye(a.shape[-1], dtype=a.dtype))
    return vecs @ torch.diag_embed(vals.clamp(min=0).sqrt()) @ vecs.transpose(-1, -2)


def scalar_newton_schulz(lam: torch.Tensor, iterations: int) -> torch.Tensor:
    """The coupled Newton-Schulz iteration on numbers in (0, 1]: y_0 = lam, z_0 = 1, t = (3 - z y) / 2,
    y <- y t, z <- t z; y -> sqrt(lam). What the matrix iteration does to each eigenvalue of A / trace(A)."""
    y, z = lam.clone(), torch.ones_like(lam)
    for _ in range(iterations):
        t = 0.5 * (3.0 - z * y)
        y, z = y * t, t * z
    return y


def ref_newton_schulz(a: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """The layer's iSQRT-COV at a finite number of iterations, through the eigenvalues: every Newton-Schulz
    iterate is a polynomial in A' = A + eps I, so A' = V diag(l) V^T becomes V diag(sqrt(t) y_k(l / t)) V^T."""
    a = a + eps * torch.eye(a.shape[-1], dtype=a.dtype)
    vals, vecs = torch.linalg.eigh(a)
    trace = vals.sum(-1, keepdim=True)
    mapped = trace.sqrt() * scalar_newton_schulz(vals / trace, iterations)
    return vecs @ torch.diag_embed(mapped) @ vecs.transpose(-1, -2)


def ref_upper(a: torch.Tensor) -> torch.Tensor:
    d = a.shape[-1]
    return torch.stack([a[:, i, j] for i in range(d) for j in range(i, d)], dim=1)


def ref_signed_sqrt_l2(a: torch.Tensor, eps: float) -> torch.Tensor:
    s = torch.sign(a) * (torch.sqrt(a.abs() + eps) - math.sqrt(eps))
    v = ref_upper(s)
    return v / v.norm(dim=1, keepdim=True)


# --- values -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("centered", [True, False], ids=["centred", "uncentred"])
@pytest.mark.parametrize("reduce_dim", [None, 3], ids=["full", "reduced"])
def test_plain_covariance_is_exact(reduce_dim, centered):
    layer = randomize_(CovariancePool(6, reduce_dim=reduce_dim, centered=centered, normalization="none")).double()
    x = fmap(3, 6, 5, 7)  # non-square
    out = layer(x)
    d = reduce_dim or 6
    assert out.shape == (3, d * (d + 1) // 2) and out.dtype == torch.float64
    expected = ref_upper(ref_second_moment(ref_features(layer, x), centered))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-13)


def test_the_upper_triangle_is_row_major_and_extras_hold_the_matrix():
    layer = CovariancePool(4, reduce_dim=None, relu=False, normalization="none").double()
    x = fmap(2, 4, 3, 3)
    out, extras = layer.forward_with_extras(x)
    m = extras["cov"]
    assert m.shape == (2, 4, 4) and torch.equal(m, m.transpose(1, 2))
    pairs = [(i, j) for i in range(4) for j in range(i, 4)]
    for k, (i, j) in enumerate(pairs):
        assert torch.equal(out[:, k], m[:, i, j])


def test_matrix_sqrt_converges_to_the_eigendecomposition_square_root():
    """With enough iterations the Newton-Schulz root is the matrix square root (eigh) to float64 precision.

    Tolerance: every iterate is a polynomial in A' = cov + eps I, so its error on eigenvalue l is the scalar
    iteration's, sqrt(t) |y_k(l/t) - sqrt(l/t)|. The test asserts the smallest normalised eigenvalue is >= 1e-2;
    from there the scalar iteration is within 1e-15 of sqrt after 14 steps (checked below, also for the smallest
    eigenvalue actually present), so at 20 iterations what remains is float64 round-off of ~60 products of 5x5
    matrices with entries O(1): 1e-10 relative is a wide margin over it, and far below the truncation error at the
    default 5 iterations (3e-2 of sqrt(trace) for a normalised eigenvalue of 1e-2).
    """
    layer = CovariancePool(5, reduce_dim=None, relu=False, iterations=20).double()
    x = fmap(3, 5, 6, 6, seed=1)  # N = 36 positions of d = 5 independent channels: a well-conditioned covariance
    cov = ref_second_moment(ref_features(layer, x), True)
    vals = torch.linalg.eigvalsh(cov + layer.eps * torch.eye(5, dtype=torch.float64))
    lam = vals / vals.sum(-1, keepdim=True)
    assert lam.min() >= 1e-2
    probe = torch.cat([torch.tensor([1e-2], dtype=torch.float64), lam.flatten()])
    assert (scalar_newton_schulz(probe, 14) - probe.sqrt()).abs().max() < 1e-15
    out = layer(x)
    torch.testing.assert_close(out, ref_upper(ref_sqrtm(cov, layer.eps)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_matrix_sqrt_at_few_iterations_is_the_scalar_iteration_on_each_eigenvalue(iterations):
    """At the default 5 steps (and fewer) the layer is exactly iSQRT-COV's truncated iteration: pre-normalised by
    the trace, post-compensated by sqrt(trace), not the exact root (its error is checked to be visible)."""
    layer = randomize_(CovariancePool(8, reduce_dim=6, iterations=iterations), seed=2).double()
    x = fmap(2, 8, 4, 5, seed=2)
    cov = ref_second_moment(ref_features(layer, x), True)
    out = layer(x)
    torch.testing.assert_close(out, ref_upper(ref_newton_schulz(cov, layer.eps, iterations)), rtol=1e-9, atol=1e-12)
    assert (out - ref_upper(ref_sqrtm(cov, layer.eps))).abs().max() > 1e-6  # truncated: not the exact root


@pytest.mark.parametrize("centered", [True, False], ids=["centred", "uncentred"])
def test_signed_sqrt_then_l2_bilinear_cnn(centered):
    layer = randomize_(CovariancePool(6, reduce_dim=4, centered=centered, normalization="signed_sqrt")).double()
    x = fmap(3, 6, 3, 5, seed=3)
    out = layer(x)
    expected = ref_signed_sqrt_l2(ref_second_moment(ref_features(layer, x), centered), layer.eps)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3, dtype=torch.float64))


# --- gradients --------------------------------------------------------------------------------------------------


def check_gradients(layer: CovariancePool, x: torch.Tensor) -> None:
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(inp, *ps):
        return functional_call(layer, dict(zip(names, ps, strict=True)), (inp,))

    x = x.detach().clone().requires_grad_()
    assert gradcheck(run, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-4)
    out = run(x, *params)
    weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * weights).sum(), [x, *params])
    for name, grad in zip(["input", *names], grads, strict=True):
        if name == "reduce.bias" and layer.centered and not layer.relu:  # a shift of every position: centred away
            assert grad.abs().max() < 1e-12, "the bias cancels in a centred covariance without ReLU"
        else:
            assert grad.abs().max() > 1e-8, f"no gradient reaches {name}"


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
def test_gradcheck_float64(normalization, relu):
    layer = randomize_(CovariancePool(4, reduce_dim=3, relu=relu, normalization=normalization), seed=4).double()
    check_gradients(layer, fmap(2, 4, 3, 2, seed=4))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_gradcheck_float64_without_reduction(normalization):
    layer = CovariancePool(3, reduce_dim=None, relu=False, centered=False, normalization=normalization).double()
    check_gradients(layer, fmap(2, 3, 2, 3, seed=5))


# --- shapes, edge cases, batch independence ---------------------------------------------------------------------


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize(
    ("b", "c", "h", "w", "reduce_dim"),
    [(1, 8, 7, 7, 4), (3, 8, 1, 1, 4), (1, 8, 1, 1, 5), (2, 8, 5, 3, None), (4, 6, 2, 9, 0), (2, 5, 1, 6, 7)],
)
def test_shapes_and_finite_values_and_gradients(b, c, h, w, reduce_dim, normalization):
    layer = CovariancePool(c, reduce_dim=reduce_dim, normalization=normalization)
    d = reduce_dim or c
    assert layer.out_features == d * (d + 1) // 2
    x = fmap(b, c, h, w, dtype=torch.float32).requires_grad_()
    out = layer(x)
    assert out.shape == (b, d * (d + 1) // 2) and out.dtype == torch.float32
    assert int(c * layer.feat_mult()) == out.shape[1]
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    unflat = CovariancePool(c, reduce_dim=reduce_dim, normalization=normalization, flatten=False)
    assert unflat(x.detach()).shape == (b, d * (d + 1) // 2, 1, 1)


def test_a_single_position_has_zero_covariance_and_no_nan():
    """H * W == 1: the centred covariance is 0; matrix_sqrt works on eps * I (its root is sqrt(eps) * I, reached
    within the iterations' accuracy for eigenvalues 1/d of the normalised matrix), the others give zeros."""
    x = fmap(2, 8, 1, 1, dtype=torch.float32)
    for normalization in NORMALIZATIONS:
        out, extras = CovariancePool(8, reduce_dim=4, normalization=normalization).forward_with_extras(x)
        assert torch.isfinite(out).all()
        if normalization == "matrix_sqrt":
            eye = torch.eye(4).expand(2, 4, 4)
            torch.testing.assert_close(extras["cov"], math.sqrt(1e-5) * eye, rtol=2e-2, atol=1e-7)
        else:
            assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_a_sample_s_output_does_not_depend_on_the_batch(normalization):
    layer = randomize_(CovariancePool(6, reduce_dim=4, normalization=normalization), seed=6).double()
    x = fmap(5, 6, 3, 4, seed=6)
    out = layer(x)
    for i in range(5):  # float64: the same maths per sample, only the BLAS blocking may differ
        torch.testing.assert_close(layer(x[i : i + 1])[0], out[i], rtol=1e-12, atol=1e-14)
    other = x.clone()
    other[1:] = fmap(4, 6, 3, 4, seed=7)
    torch.testing.assert_close(layer(other)[0], out[0], rtol=1e-12, atol=1e-14)


def test_nhwc_and_channels_last_inputs_match_nchw():
    layer = randomize_(CovariancePool(6, reduce_dim=4), seed=8).double()
    x = fmap(2, 6, 3, 5, seed=8)
    out = layer(x)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), out, rtol=1e-12, atol=1e-14)
    nhwc = CovariancePool(6, reduce_dim=4, input_fmt="NHWC").double()
    nhwc.load_state_dict(layer.state_dict())
    torch.testing.assert_close(nhwc(x.permute(0, 2, 3, 1)), out, rtol=1e-12, atol=1e-14)


# --- dtypes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_half_precision_is_computed_in_float32_and_returned_in_the_input_dtype(dtype, normalization):
    layer = CovariancePool(8, reduce_dim=4, normalization=normalization)
    x = fmap(3, 8, 4, 5, seed=9, dtype=dtype)
    out = layer(x)
    assert out.dtype == dtype
    assert torch.equal(out, layer(x.float()).to(dtype))  # the same float32 computation, rounded once at the end
    half_layer = copy.deepcopy(layer).to(dtype)  # parameters in half precision too, as in a .half() model
    float_of_half = copy.deepcopy(half_layer).float()
    assert torch.equal(half_layer(x), float_of_half(x.float()).to(dtype))


@pytest.mark.parametrize("normalization", ["matrix_sqrt", "signed_sqrt"])
def test_large_float16_inputs_stay_finite_through_the_square_roots(normalization):
    """Values up to 6e4 (near float16's max): their squares overflow float16, not the float32 covariance."""
    gen = torch.Generator().manual_seed(10)
    x = (6e4 * (0.01 + 0.99 * torch.rand(2, 8, 4, 5, generator=gen))).half()
    out = CovariancePool(8, reduce_dim=4, normalization=normalization)(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_float64_input_is_computed_in_float64_with_float32_parameters():
    layer = randomize_(CovariancePool(6, reduce_dim=4), seed=11)  # float32 parameters
    x = fmap(2, 6, 3, 3, seed=11)
    out = layer(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, layer.double()(x), rtol=0, atol=0)


# --- width, factory, registry -----------------------------------------------------------------------------------


def test_feat_mult_is_the_exact_width_ratio():
    pool = CovariancePool(1280)  # reduce_dim=64: 2080 features
    assert pool.out_features == 2080
    assert pool.feat_mult() == Fraction(13, 8)
    assert int(1280 * pool.feat_mult()) == 2080
    with pytest.raises(TypeError, match=r"feat_mult\(\) = 13/8 is not a whole number.*int\(C \* feat_mult\(\)\)"):
        int(pool.feat_mult())
    whole = CovariancePool(16).feat_mult()  # 2080 / 16
    assert whole == 130 and type(whole) is int
    assert CovariancePool(7, reduce_dim=None).feat_mult() == 4  # d = C = 7: 28 features
    assert CovariancePool(6, reduce_dim=0).reduce_dim is None and CovariancePool(6, reduce_dim=0).out_features == 21


@pytest.mark.parametrize("name", ["cov", "COV", "covariance", "bilinear", "isqrt", "isqrt_cov", "second_order"])
def test_names_and_aliases(name):
    layer = create_pool(name, 8)
    assert type(layer) is CovariancePool and pool_spec(layer) == "cov"
    assert layer(torch.rand(2, 8, 3, 4)).shape == (2, 2080)


def test_pool_factory_describes_and_rebuilds_the_layer():
    factory = pool_factory(spec="cov", reduce_dim=16, normalization="signed_sqrt", centered=False)
    described = factory.describe()
    assert described == {
        "spec": "cov",
        "kwargs": {"reduce_dim": 16, "normalization": "signed_sqrt", "centered": False},
    }
    torch.manual_seed(0)
    built = factory(32)
    torch.manual_seed(0)
    rebuilt = create_pool(described["spec"], 32, **described["kwargs"])
    assert repr(built) == repr(rebuilt) and built.out_features == 136
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in built.state_dict().items())
    in_spec = create_pool("cov(reduce_dim=null, normalization=none, iterations=3)", 6)
    assert in_spec.reduce is None and in_spec.normalization == "none" and in_spec.out_features == 21
    assert pool_config_keys("cov") == [
        "spec", "reduce_dim", "relu", "centered", "normalization", "iterations", "eps", "flatten", "input_fmt"
    ]  # fmt: skip


def test_the_learnable_parameters_are_the_reduction_s():
    layer = CovariancePool(12, reduce_dim=5)
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {
        "reduce.weight": (5, 12, 1, 1),  # a matrix (d x C)
        "reduce.bias": (5,),
    }
    assert {id(p) for p in pooling_parameters(layer)} == {id(p) for p in layer.parameters()}
    assert list(CovariancePool(12, reduce_dim=None).parameters()) == []


# --- bad input --------------------------------------------------------------------------------------------------


def test_wrong_channels_say_what_was_built_and_given():
    with pytest.raises(ValueError, match=r"built for 8 channels, got a feature map with 6"):
        CovariancePool(8)(torch.rand(2, 6, 3, 3))
    with pytest.raises(ValueError, match=r"4-D feature map"):
        CovariancePool(8)(torch.rand(8, 3, 3))
    with pytest.raises(ValueError, match=r"CovariancePool needs the number of input channels"):
        CovariancePool(None)
    with pytest.raises(ValueError, match=r"CovariancePool needs the number of input channels"):
        create_pool("cov")


@pytest.mark.parametrize("bad", [-1, -64, 2.5, True, "64"])
def test_a_bad_reduce_dim_says_what_is_accepted(bad):
    with pytest.raises(ValueError, match=r"reduce_dim must be a positive int.*None/0.*got") as err:
        CovariancePool(8, reduce_dim=bad)
    assert repr(bad) in str(err.value) or str(bad) in str(err.value)


def test_unknown_normalization_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown normalization 'sqrt'; accepted: matrix_sqrt, signed_sqrt, none"):
        CovariancePool(8, normalization="sqrt")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iterations": 0}, r"iterations must be an int >= 1.*got 0"),
        ({"iterations": 2.0}, r"iterations must be an int >= 1.*got 2.0"),
        ({"eps": 0.0}, r"eps must be a number > 0, got 0.0"),
        ({"eps": -1e-3}, r"eps must be a number > 0, got -0.001"),
    ],
)
def test_bad_iterations_and_eps(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CovariancePool(8, **kwargs)


def test_an_unknown_argument_lists_the_accepted_ones():
    with pytest.raises(TypeError, match=r"CovariancePool.*\['reduce'\].*accepted: reduce_dim, relu, centered"):
        create_pool("cov", 8, reduce=3)


@pytest.mark.parametrize("channels", [8, 1280])
def test_a_hybrid_with_a_covariance_branch_says_why_not(channels):
    with pytest.raises(ValueError, match=r"branch 'cov' \(CovariancePool\).*feat_mult\(\) = .*must return \(B, C\)"):
        create_pool("hybrid(avg,cov)", channels)
    with pytest.raises(ValueError, match=r"branch 'cov' \(CovariancePool\)"):
        HybridPool(channels, branches=("avg", "bilinear"), mixing="concat")


# --- in a model -------------------------------------------------------------------------------------------------


class FeatureMaps(nn.Identity):
    """A stand-in backbone: the input is already the ``(B, 1280, 7, 7)`` feature map (as with the feature cache)."""

    out_channels = 1280


def test_create_pool_on_mobilenet_v2_sized_maps_trains_a_head_of_its_width():
    pool = create_pool("cov", 1280)
    head = nn.Linear(int(1280 * pool.feat_mult()), 10)
    assert head.in_features == pool.out_features == 2080
    x = fmap(2, 1280, 7, 7, dtype=torch.float32).relu().requires_grad_()
    loss = nn.functional.cross_entropy(head(pool(x)), torch.tensor([1, 7]))
    loss.backward()
    for grad in (x.grad, pool.reduce.weight.grad, pool.reduce.bias.grad, head.weight.grad):
        assert torch.isfinite(grad).all() and grad.abs().max() > 0


@pytest.mark.parametrize("pool", ["cov", pool_factory(spec="cov", reduce_dim=64)], ids=["spec", "factory"])
def test_the_classifier_builds_a_head_of_the_covariance_width(pool):
    model = Classifier(FeatureMaps(), pool, num_classes=10, post_bn=True)
    assert model.embed_dim == 2080 and model.head.in_features == 2080
    groups = model.parameter_groups()  # the reduction is a weight: it trains with the head, not at pool_lr_mult
    assert not groups["pool"] and {id(p) for p in model.pool.parameters()} <= {id(p) for p in groups["head"]}
    x = fmap(2, 1280, 7, 7, dtype=torch.float32).relu()
    loss = nn.functional.cross_entropy(model.forward_head(x), torch.tensor([1, 7]))
    loss.backward()
    assert torch.isfinite(model.pool.reduce.weight.grad).all() and model.pool.reduce.weight.grad.abs().max() > 0
