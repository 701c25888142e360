"""The pooling study's switches: the Flatten "pool" arm, the freeze-and-train schedule, robustness tests."""

from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from hybridpool.models import Classifier, SmallCNN
from hybridpool.pooling import Flatten, HybridPool, create_pool, known_pools
from hybridpool.records import read_results
from hybridpool.run.config import ConfigError, validate_config
from hybridpool.run.module import ClassificationModule
from hybridpool.run.robustness import grid_permutation, permute_grid, shift_image
from hybridpool.run.schedule import mixing_parameters, resolve_switch_epoch
from hybridpool.run.train import train

# ------------------------------------------------------------------------------------------------ Flatten


def test_flatten_is_nchw_flatten_with_feat_mult_h_times_w():
    pool = create_pool("flatten", 4, spatial_size=(3, 5))
    assert isinstance(pool, Flatten) and "flatten" in known_pools()
    assert pool.feat_mult() == 15 and not list(pool.parameters())
    x = torch.randn(2, 4, 3, 5)
    out = pool(x)
    assert out.shape == (2, 60)
    torch.testing.assert_close(out, x.flatten(1), rtol=0, atol=0)
    assert out[1, 2 * 15 + 1 * 5 + 4] == x[1, 2, 1, 4]  # feature (c * H + h) * W + w
    assert create_pool("flatten", spatial_size=7).spatial_size == (7, 7)
    assert Flatten(4, spatial_size=[3, 5], flatten=False)(x).shape == (2, 60, 1, 1)
    assert pool(x[1:2])[0].equal(out[1])  # a sample's output does not depend on the batch


def test_flatten_keeps_nchw_order_for_channels_last_and_nhwc_inputs():
    x = torch.randn(3, 4, 3, 5)
    expected = x.flatten(1)
    pool = Flatten(4, spatial_size=(3, 5))
    torch.testing.assert_close(pool(x.contiguous(memory_format=torch.channels_last)), expected, rtol=0, atol=0)
    nhwc = Flatten(4, spatial_size=(3, 5), input_fmt="NHWC")
    torch.testing.assert_close(nhwc(x.permute(0, 2, 3, 1).contiguous()), expected, rtol=0, atol=0)


def test_flatten_refuses_another_spatial_size_and_a_missing_one():
    pool = Flatten(4, spatial_size=(3, 5))
    with pytest.raises(ValueError, match=r"3x5.*4x4"):
        pool(torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match="spatial_size"):
        create_pool("flatten", 4)
    for bad in (0, (3,), (3, 0), "7", (2.5, 3), True):
        with pytest.raises(ValueError, match="spatial_size"):
            Flatten(4, spatial_size=bad)


def test_classifier_with_flatten_has_the_big_linear_head_in_the_head_group(make_cfg):
    cfg = make_cfg(["pool=flatten", "pool.spatial_size=[8,6]"])
    model = Classifier(SmallCNN(3, (8, 16)), instantiate(cfg.pool), num_classes=3, post_bn=True)
    assert isinstance(model.pool, Flatten) and model.embed_dim == 16 * 8 * 6
    assert model(torch.randn(2, 3, 16, 12)).shape == (2, 3)
    counts = model.parameter_counts()
    assert counts["pool"] == 0 and counts["head"] == 768 * 3 + 3 + 2 * 768  # linear + post-BN
    assert counts["total"] == counts["backbone"] + counts["pool"] + counts["head"]
    groups = model.parameter_groups()
    assert groups["pool"] == [] and any(p is model.head.weight for p in groups["head"])
    module = ClassificationModule(model, optimizer=functools.partial(torch.optim.AdamW, lr=0.01))
    module._trainer = SimpleNamespace(estimated_stepping_batches=4, max_epochs=1)
    names = [g["name"] for g in module.configure_optimizers()["optimizer"].param_groups]
    assert names == ["backbone", "head"]  # the empty pool group is left out


def test_flatten_config_validates_unset_and_checks_a_set_spatial_size(make_cfg):
    c = validate_config(make_cfg(["pool=flatten"]))
    assert c["pool"]["_target_"] == "hybridpool.pooling.pool_factory" and c["pool"]["spec"] == "flatten"
    assert c["pool"]["spatial_size"] == "???"
    assert validate_config(make_cfg(["pool=flatten", "pool.spatial_size=[7,7]"]))["pool"]["spatial_size"] == [7, 7]
    with pytest.raises(ConfigError, match=r"pool\.spatial_size"):
        validate_config(make_cfg(["pool=flatten", "pool.spatial_size=[0,7]"]))


@pytest.mark.parametrize(
    ("size", "widths", "expected"),
    [(28, (32, 64, 128), (7, 7)), (32, (32, 64, 128), (8, 8)), (16, (8, 16), (8, 8))],
)
def test_small_cnn_feature_map_sizes_named_in_the_flatten_config(size, widths, expected):
    fmap = SmallCNN(3, widths)(torch.zeros(1, 3, size, size))
    assert tuple(fmap.shape[-2:]) == expected


# ------------------------------------------------------------------------------------------------ freeze_and_train


def _hybrid_model(mixing: str = "gate") -> Classifier:
    torch.manual_seed(0)
    pool = HybridPool(16, branches=("avg", "max", "gem"), mixing=mixing, init="gap", gate_hidden=8)
    return Classifier(SmallCNN(3, (8, 16)), pool, num_classes=3)


def _module(model: Classifier, **kwargs) -> ClassificationModule:
    opt = functools.partial(torch.optim.AdamW, lr=0.05, weight_decay=0.1)
    module = ClassificationModule(model, optimizer=opt, pool_weight_decay=0.1, scheduler="constant", **kwargs)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=4, world_size=1)
    return module


def _step(module: ClassificationModule, optimizer: torch.optim.Optimizer) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 1])
    optimizer.zero_grad()
    F.cross_entropy(module(x), y).backward()
    module.on_after_backward()
    optimizer.step()


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def test_mixing_parameters_are_everything_of_the_hybrid_outside_its_branches():
    pool = _hybrid_model("gate").pool
    names = {n for n, p in pool.named_parameters() if any(p is q for q in mixing_parameters(pool))}
    assert names == {"mix_logits", "blend", "gate.0.weight", "gate.0.bias", "gate.2.weight", "gate.2.bias"}


def test_stage_one_step_leaves_the_whole_pool_bit_identical_while_the_rest_trains():
    model = _hybrid_model("gate")
    module = _module(model, pool_schedule="freeze_and_train", switch_epoch=2)
    module._switch_epoch = 2
    module._stage = module.stage_of_epoch(1)
    assert module._stage == 1
    opt = module.configure_optimizers()["optimizer"]
    # mixing parameters and the branches' own (GeM p: zero gradient at init="gap", but weight decay 0.1 here)
    mixing = list(model.pool.parameters())
    assert any(p is model.pool.branches["gem"].raw for p in mixing)
    before_mix, before_bb, before_head = (
        _snapshot(mixing),
        _snapshot(model.backbone.parameters()),
        _snapshot(model.head.parameters()),
    )
    _step(module, opt)
    assert all(p.grad is None for p in mixing)
    assert all(torch.equal(a, b) for a, b in zip(before_mix, mixing, strict=True))
    assert not any(p in opt.state for p in mixing)  # AdamW skipped them: no moments, no weight decay
    assert all(not torch.equal(a, b) for a, b in zip(before_head, model.head.parameters(), strict=True))
    assert sum(not torch.equal(a, b) for a, b in zip(before_bb, model.backbone.parameters(), strict=True)) > 0

    # the control: the same step with the joint schedule moves the mixing parameters (blend, at least)
    joint_model = _hybrid_model("gate")
    joint = _module(joint_model)
    opt = joint.configure_optimizers()["optimizer"]
    before = _snapshot(mixing_parameters(joint_model.pool))
    _step(joint, opt)
    assert any(not torch.equal(a, b) for a, b in zip(before, mixing_parameters(joint_model.pool), strict=True))


def test_stage_two_freezes_backbone_weights_and_batchnorm_while_pool_and_head_train():
    model = _hybrid_model("scalar")
    module = _module(model, pool_schedule="freeze_and_train", switch_epoch=1)
    module._switch_epoch = 1
    module._stage = module.stage_of_epoch(3)
    assert module._stage == 2
    module.train()
    assert not model.backbone.training and not any(m.training for m in model.backbone.modules())
    assert model.pool.training and model.head.training
    opt = module.configure_optimizers()["optimizer"]
    with torch.no_grad():
        model.pool.blend.fill_(0.5)  # as after stage 1 plus some training: every branch in use
    before_bb = _snapshot(model.backbone.state_dict().values())  # weights and BatchNorm running statistics
    before_pool = _snapshot(model.pool.parameters())
    before_head = _snapshot(model.head.parameters())
    _step(module, opt)
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before_bb, model.backbone.state_dict().values(), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(before_pool, model.pool.parameters(), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(before_head, model.head.parameters(), strict=True))


def test_switch_epoch_defaults_to_half_and_must_leave_both_stages_an_epoch():
    assert resolve_switch_epoch(None, 10) == 5 and resolve_switch_epoch(None, 3) == 1
    assert resolve_switch_epoch(2, 3) == 2 and resolve_switch_epoch(7, None) == 7
    for switch, epochs in ((None, 1), (3, 3), (5, 3), (0, 10), (None, -1), (None, None)):
        with pytest.raises(ValueError, match=r"max_epochs|switch_epoch"):
            resolve_switch_epoch(switch, epochs)


def test_freeze_and_train_needs_a_weighted_hybrid_pool():
    with pytest.raises(ValueError, match="HybridPool"):
        ClassificationModule(Classifier(SmallCNN(3, (8,)), "avg", 3), pool_schedule="freeze_and_train")
    concat = Classifier(SmallCNN(3, (8,)), HybridPool(8, ("avg", "max"), mixing="concat"), 3)
    with pytest.raises(ValueError, match="mixing"):
        ClassificationModule(concat, pool_schedule="freeze_and_train")
    with pytest.raises(ValueError, match="pool_schedule"):
        ClassificationModule(_hybrid_model(), pool_schedule="freeze")
    with pytest.raises(ValueError, match="switch_epoch"):
        ClassificationModule(_hybrid_model(), pool_schedule="freeze_and_train", switch_epoch=0)
    with pytest.raises(ValueError, match="switch_epoch"):
        ClassificationModule(_hybrid_model(), switch_epoch=2)  # joint has no switch
    with pytest.warns(UserWarning, match="init='gap'"):
        ClassificationModule(Classifier(SmallCNN(3, (8,)), "hybrid(avg,max)", 3), pool_schedule="freeze_and_train")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["module.pool_schedule=freeze_and_train", "pool=avg"], "needs a HybridPool"),
        (["module.pool_schedule=freeze_and_train", "pool=hybrid_concat"], "pool.mixing"),
        (["module.pool_schedule=freeze_and_train", "trainer.max_epochs=1"], "module.switch_epoch"),
        (["module.pool_schedule=freeze_and_train", "module.switch_epoch=4", "trainer.max_epochs=4"], "< trainer"),
        (["module.switch_epoch=2"], "only used with"),
        (["module.pool_schedule=jiont"], "unknown schedule"),
    ],
)
def test_config_validation_of_the_schedule(overrides, expected, make_cfg):
    with pytest.raises(ConfigError, match=expected):
        validate_config(make_cfg(overrides))


class _StageProbe(pl.Callback):
    """Records which parameters (and BatchNorm statistics) changed during each training epoch."""

    def __init__(self):
        self.changed: dict[int, dict[str, bool]] = {}

    def _groups(self, pl_module):
        model = pl_module.model
        return {
            "mixing": mixing_parameters(model.pool),
            "backbone": [*model.backbone.parameters(), *model.backbone.buffers()],
            "head": list(model.head.parameters()),
            "gem_p": [model.pool.branches["gem"].raw],
        }

    def on_train_epoch_start(self, trainer, pl_module):
        self.before = {k: _snapshot(v) for k, v in self._groups(pl_module).items()}

    def on_train_epoch_end(self, trainer, pl_module):
        now = self._groups(pl_module)
        self.changed[trainer.current_epoch] = {
            k: any(not torch.equal(a, b) for a, b in zip(self.before[k], now[k], strict=True)) for k in now
        }


FREEZE = ["pool.init=gap", "module.pool_schedule=freeze_and_train", "trainer.max_epochs=2"]


def test_freeze_and_train_end_to_end_stages_and_record(make_cfg, run_path):
    probe = _StageProbe()
    metrics = train(make_cfg([*FREEZE, "logger=csv"], name="fat"), extra_callbacks=[probe])
    # switch_epoch null -> max_epochs // 2 = 1: epoch 0 is stage 1, epoch 1 stage 2
    assert probe.changed[0] == {"mixing": False, "backbone": True, "head": True, "gem_p": False}
    assert probe.changed[1] == {"mixing": True, "backbone": False, "head": True, "gem_p": True}
    rec = read_results(run_path("fat"))
    assert rec["status"] == "completed"
    assert rec["config"]["module"]["pool_schedule"] == "freeze_and_train"
    assert rec["schedule"] == {"pool_schedule": "freeze_and_train", "switch_epoch": 1}
    assert rec["config"]["module"]["switch_epoch"] is None  # the default, resolved in rec["schedule"]
    assert rec["metrics"]["schedule/stage"] == 2.0 and "test/acc" in metrics


class _Crash(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= 2:
            raise RuntimeError("simulated crash")


class _Final(pl.Callback):
    """The stage and backbone mode seen in each training epoch, and the weights at the end of training."""

    def __init__(self):
        self.stages: dict[int, tuple[int, bool]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.stages[trainer.current_epoch] = (pl_module._stage, pl_module.model.backbone.training)

    def on_train_end(self, trainer, pl_module):
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_freeze_and_train_resumes_in_the_right_stage(make_cfg, run_path):
    # a checkpoint after every epoch (no monitor), so that the crashed run resumes at the switch epoch
    common = [
        *FREEZE,
        "trainer.max_epochs=3",
        "module.switch_epoch=1",
        "callbacks=checkpoint",
        "callbacks.model_checkpoint.monitor=null",
    ]
    full, resumed = _Final(), _Final()
    train(make_cfg(common, name="full"), extra_callbacks=[full])
    assert full.stages == {0: (1, True), 1: (2, False), 2: (2, False)}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_cfg(common, name="crashed"), extra_callbacks=[_Crash()])
    train(make_cfg([*common, "ckpt_path=last"], name="relaunch"), extra_callbacks=[resumed])
    rec = read_results(run_path("crashed"))
    assert rec["status"] == "completed" and rec["resumed_from"].endswith("last.ckpt")
    # resumed from the checkpoint of epoch 0 (the crash came before epoch 1's): straight into stage 2
    assert resumed.stages == {1: (2, False), 2: (2, False)}
    for k, v in full.weights.items():
        torch.testing.assert_close(resumed.weights[k], v, rtol=0, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------------------------ robustness


def test_shift_image_moves_right_and_down_with_zero_fill():
    x = torch.arange(1, 13, dtype=torch.float32).reshape(1, 1, 3, 4)
    expected = torch.tensor([[0.0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7]]).reshape(1, 1, 3, 4)
    assert torch.equal(shift_image(x, 1), expected)
    assert torch.equal(shift_image(x, 0), x)
    batch = torch.randn(3, 2, 5, 6)
    out = shift_image(batch, 2)
    assert out.shape == batch.shape and torch.equal(out[1:2], shift_image(batch[1:2], 2))
    assert torch.equal(out[..., 2:, 2:], batch[..., :3, :4]) and not out[..., :2, :].any() and not out[..., :2].any()
    for bad in (3, -1, 1.5):
        with pytest.raises(ValueError, match="shift"):
            shift_image(x, bad)


def test_grid_permutation_is_fixed_and_never_the_identity():
    for grid in (2, 3, 4):
        for seed in range(20):
            perm = grid_permutation(grid, seed)
            assert sorted(perm.tolist()) == list(range(grid * grid))
            assert perm.tolist() != list(range(grid * grid))
            assert torch.equal(perm, grid_permutation(grid, seed))
    with pytest.raises(ValueError, match="grid"):
        grid_permutation(1)


def test_permute_grid_exact_tiles_crop_and_batch_independence():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    swapped = permute_grid(x, 2, perm=torch.tensor([1, 0, 3, 2]))  # left and right halves swap
    expected = torch.tensor([[2.0, 3, 0, 1], [6, 7, 4, 5], [10, 11, 8, 9], [14, 15, 12, 13]]).reshape(1, 1, 4, 4)
    assert torch.equal(swapped, expected)
    rotated = permute_grid(x, 2, perm=torch.tensor([2, 0, 3, 1]))  # out tile i is input tile perm[i]
    tile = {0: x[..., :2, :2], 1: x[..., :2, 2:], 2: x[..., 2:, :2], 3: x[..., 2:, 2:]}
    assert torch.equal(rotated[..., :2, :2], tile[2]) and torch.equal(rotated[..., :2, 2:], tile[0])
    assert torch.equal(rotated[..., 2:, :2], tile[3]) and torch.equal(rotated[..., 2:, 2:], tile[1])
    # 5x7 with grid 2: the last row and column are cropped; tiles are 2x3
    y = torch.randn(3, 2, 5, 7)
    perm = grid_permutation(2, seed=0)
    out = permute_grid(y, 2)
    assert out.shape == (3, 2, 4, 6)
    inverse = torch.argsort(perm)
    assert torch.equal(permute_grid(out, 2, perm=inverse), y[..., :4, :6])
    assert torch.equal(out[2:3], permute_grid(y[2:3], 2))
    assert not torch.equal(out, y[..., :4, :6])
    with pytest.raises(ValueError, match="permutation"):
        permute_grid(x, 2, perm=torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="at least"):
        permute_grid(x, 5)


def test_robust_test_step_scores_the_transformed_images():
    torch.manual_seed(0)
    model = Classifier(SmallCNN(3, (8, 16)), Flatten(16, spatial_size=(4, 4)), num_classes=3).eval()
    module = ClassificationModule(model, robustness={"shift": 2, "grid": 2})
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        module.test_step((x, y), 0)
        shifted = model(shift_image(x, 2))
        tiled = model(permute_grid(x, 2, perm=grid_permutation(2, 0)))
        assert not torch.allclose(shifted, model(x))
    assert module.robust_metrics["shift"].compute() == (shifted.argmax(-1) == y).float().mean()
    assert module.robust_metrics["grid"].compute() == (tiled.argmax(-1) == y).float().mean()


def test_robustness_settings_are_checked():
    model = Classifier(SmallCNN(3, (8,)), "avg", 3)
    with pytest.raises(ValueError, match="cached backbone features"):
        ClassificationModule(model, robustness={"shift": 2, "grid": 2}, from_features=True)
    with pytest.raises(ValueError, match="unknown key"):
        ClassificationModule(model, robustness={"shfit": 2})
    with pytest.raises(ValueError, match=r"robustness\.grid"):
        ClassificationModule(model, robustness={"grid": 1})
    assert not ClassificationModule(model).robust_metrics
    assert set(ClassificationModule(model, robustness={"grid": 3}).robust_metrics) == {"grid"}


def test_config_refuses_robustness_with_the_feature_cache(make_cfg):
    robust = "module.robustness={shift:2,grid:2}"
    with pytest.raises(ConfigError, match=r"features\.enabled=false"):
        validate_config(make_cfg([robust, "model.freeze_backbone=true"]))
    c = validate_config(make_cfg([robust, "model.freeze_backbone=true", "features.enabled=false"]))
    assert c["module"]["robustness"] == {"shift": 2, "grid": 2}


def test_robustness_and_flatten_end_to_end(make_cfg, run_path):
    # the flatten arm with every default callback (checkpoints, LR monitor, attention maps) and the CSV logger
    overrides = [
        "pool=flatten",
        "pool.spatial_size=[8,8]",
        "module.robustness={shift:2,grid:2}",
        "logger=csv",
        "callbacks=default",
    ]
    metrics = train(make_cfg(overrides, name="robust"))
    rec = read_results(run_path("robust"))
    assert rec["status"] == "completed" and rec["model"]["pool"] == "Flatten"
    assert rec["model"]["embed_dim"] == 16 * 8 * 8
    assert rec["config"]["module"]["robustness"] == {"shift": 2, "grid": 2}
    assert rec["schedule"] == {"pool_schedule": "joint", "switch_epoch": None}
    for key in ("test/acc", "test_shift/acc", "test_grid/acc"):
        assert 0.0 <= rec["metrics"][key] <= 1.0 and metrics[key] == rec["metrics"][key]
    assert "attention_maps" not in rec["paths"]  # no attention map to draw, and no crash
