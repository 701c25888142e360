"""Bad inputs and bad arguments raise ValueError / TypeError saying what was given and what is accepted."""

from __future__ import annotations

import pytest
import torch
from pool_refs import CONFIGS, C, build

from hybridpool.pooling import (
    AttentionPool,
    GeM,
    GlobalAvgPool,
    HybridPool,
    KMaxPool,
    LSEPool,
    QueryAttentionPool,
    create_pool,
    registry,
)

SOME = ["avg", "max", "gem_pc", "lse", "kmax_int", "attn_mh", "qattn_gap", "hybrid_scalar", "hybrid_gate"]


# --- forward-time checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOME)
def test_three_d_input_is_a_value_error_with_the_shape(name):
    with pytest.raises(ValueError, match=r"4-D feature map \(B, C, H, W\), got shape \(2, 8, 5\)"):
        build(name)(torch.rand(2, C, 5))
    with pytest.raises(ValueError, match=r"4-D.*got shape \(2, 8, 5, 5, 1\)"):
        build(name)(torch.rand(2, C, 5, 5, 1))


def test_three_d_input_in_nhwc_mode_names_the_nhwc_layout():
    with pytest.raises(ValueError, match=r"\(B, H, W, C\), got shape \(3, 4, 8\)"):
        GeM(input_fmt="NHWC")(torch.rand(3, 4, C))


@pytest.mark.parametrize("name", SOME)
@pytest.mark.parametrize("hw", [(0, 5), (5, 0), (0, 0)])
def test_zero_size_spatial_dims_are_a_value_error(name, hw):
    with pytest.raises(ValueError, match=rf"at least 1x1, got H={hw[0]}, W={hw[1]}"):
        build(name)(torch.rand(2, C, *hw))


def test_zero_size_spatial_dims_in_nhwc_mode():
    with pytest.raises(ValueError, match="at least 1x1"):
        GlobalAvgPool(input_fmt="NHWC")(torch.rand(2, 0, 3, C))


@pytest.mark.parametrize("name", SOME)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_input_is_a_type_error(name, dtype):
    with pytest.raises(TypeError, match=rf"floating-point feature map.*got {dtype}"):
        build(name)(torch.ones(2, C, 3, 3, dtype=dtype))


@pytest.mark.parametrize("name", SOME)
def test_wrong_channel_count_is_a_value_error(name):
    with pytest.raises(ValueError, match=r"built for 8 channels, got a feature map with 6"):
        build(name)(torch.rand(2, 6, 3, 3))


def test_wrong_channel_count_in_nhwc_mode():
    layer = create_pool("hybrid(avg,gem)", channels=C, input_fmt="NHWC")
    with pytest.raises(ValueError, match=r"built for 8 channels, got a feature map with 3"):
        layer(torch.rand(2, 5, 4, 3))  # an NCHW tensor handed to an NHWC layer


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        GeM()([[1.0, 2.0]])


def test_forward_with_extras_checks_too():
    with pytest.raises(ValueError, match="4-D"):
        AttentionPool(C).forward_with_extras(torch.rand(C, 3, 3))


# --- constructor checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [0, -4, 2.5, "8", True])
@pytest.mark.parametrize("spec", ["avg", "gem", "attn", "qattn", "hybrid(avg,max)"])
def test_non_positive_or_non_int_channels_are_a_value_error(spec, channels):
    with pytest.raises(ValueError, match=r"channels must be a positive int, got"):
        create_pool(spec, channels=channels)


@pytest.mark.parametrize("cls", [AttentionPool, QueryAttentionPool, HybridPool])
def test_layers_that_need_channels_say_so(cls):
    with pytest.raises(ValueError, match="channels=<C>"):
        cls(None)


@pytest.mark.parametrize("cls", [GeM, LSEPool])
def test_per_channel_needs_channels(cls):
    with pytest.raises(ValueError, match=r"per_channel=True.*channels=<C>"):
        cls(per_channel=True)


@pytest.mark.parametrize("cls", [AttentionPool, QueryAttentionPool])
@pytest.mark.parametrize("heads", [3, 0, -2, 16])
def test_heads_must_divide_channels(cls, heads):
    with pytest.raises(ValueError, match=rf"heads must divide channels \(8\), got heads={heads}"):
        cls(C, heads=heads)


def test_heads_inside_a_hybrid():
    with pytest.raises(ValueError, match="heads must divide channels"):
        HybridPool(C, branches=("avg", "attn"), branch_kwargs={"attn": {"heads": 3}})


@pytest.mark.parametrize("k", [0, -1, 0.0, 1.5, -0.5])
def test_kmax_k_out_of_range_is_a_value_error(k):
    with pytest.raises(ValueError, match=r"k .*got"):
        KMaxPool(k=k)


@pytest.mark.parametrize("k", [True, "3", None, [2]])
def test_kmax_k_of_the_wrong_type_is_a_type_error(k):
    with pytest.raises(TypeError, match="k must be"):
        KMaxPool(k=k)


@pytest.mark.parametrize("p", [0.5, 0.0, -2.0])
def test_gem_fixed_p_below_one_is_a_value_error(p):
    with pytest.raises(ValueError, match=r"p must be > 1\.0, got"):
        GeM(p=p, learn_p=False)


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_gem_learnable_p_must_start_above_one(p):
    with pytest.raises(ValueError, match="greater than 1"):
        GeM(p=p)


@pytest.mark.parametrize("r", [0.0, -1.0])
def test_lse_r_must_be_positive(r):
    with pytest.raises(ValueError, match=r"greater than 0|must be > 0"):
        LSEPool(r=r)
    with pytest.raises(ValueError, match="must be > 0"):
        LSEPool(r=r, learn_r=False)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        AttentionPool(C, temperature=temperature)
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        QueryAttentionPool(C, temperature=temperature)


def test_unknown_query_mode():
    with pytest.raises(ValueError, match=r"unknown query 'cls'; accepted: gap, learned"):
        QueryAttentionPool(C, query="cls")


def test_unknown_input_fmt():
    with pytest.raises(ValueError, match=r"unknown input_fmt 'NWHC'; accepted: NCHW, NHWC"):
        GeM(input_fmt="NWHC")


def test_unknown_mixing_mode_lists_the_modes():
    with pytest.raises(ValueError, match=r"unknown mixing 'softmax'; accepted: scalar, channel, gate, concat"):
        HybridPool(C, mixing="softmax")


def test_unknown_init():
    with pytest.raises(ValueError, match=r"unknown init 'zeros'; accepted: uniform, gap"):
        HybridPool(C, init="zeros")


def test_gap_init_needs_an_avg_branch():
    with pytest.raises(ValueError, match=r"init='gap' needs an 'avg' branch; branches: \['max', 'gem'\]"):
        HybridPool(C, branches=("max", "gem"), init="gap")


def test_gap_init_is_not_available_with_concat():
    with pytest.raises(ValueError, match=r"init='gap' is not available with mixing='concat'"):
        HybridPool(C, branches=("avg", "gem"), mixing="concat", init="gap")


def test_hybrid_branch_errors():
    with pytest.raises(ValueError, match=r"unknown pooling 'median'.*known: .*avg"):
        HybridPool(C, branches=("avg", "median"))
    with pytest.raises(TypeError, match="sequence of names"):
        HybridPool(C, branches="avg,max")
    with pytest.raises(ValueError, match="at least one branch"):
        HybridPool(C, branches=())
    with pytest.raises(ValueError, match=r"branch_kwargs for \['lse'\], which are not branches"):
        HybridPool(C, branches=("avg", "gem"), branch_kwargs={"lse": {"r": 2.0}})
    with pytest.raises(TypeError):
        HybridPool(C, branches=("avg", "gem"), branch_kwargs={"gem": {"q": 2.0}})


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"branch_kwargs": {"flatten": {"spatial_size": (3, 3)}}}, {"branch_kwargs": {"flatten": {"spatial_size": 1}}}],
    ids=["no_spatial_size", "spatial_size_3x3", "spatial_size_1"],
)
def test_hybrid_rejects_a_flatten_branch(kwargs):
    """flatten is registered next to the poolings but returns (B, C * H * W): rejected at construction, with or
    without its spatial_size, instead of failing inside torch.stack at the first forward."""
    with pytest.raises(ValueError, match=r"branch 'flatten' is not a pooling.*must return \(B, C\)"):
        HybridPool(C, branches=("avg", "flatten"), **kwargs)


def test_hybrid_rejects_any_branch_wider_than_c(monkeypatch):
    """Any branch layer whose feat_mult() is not 1 is rejected, naming the branch and its feat_mult()."""

    class Doubled(GlobalAvgPool):
        def feat_mult(self) -> int:
            return 2

    monkeypatch.setitem(registry.SINGLE_POOLS, "doubled", Doubled)
    with pytest.raises(ValueError, match=r"branch 'doubled' \(Doubled\).*feat_mult\(\) = 2.*must return \(B, C\)"):
        HybridPool(C, branches=("avg", "doubled"))


def test_every_config_is_covered_by_a_forward_check():
    for name in CONFIGS:  # every layer validates its input, not only the ones parametrised above
        with pytest.raises(ValueError, match="4-D"):
            build(name, randomize=False)(torch.rand(C, 3, 3))
