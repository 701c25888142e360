"""Config composition of every group option, and the start-of-run schema check."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from hybridpool.run import config_dir
from hybridpool.run.config import ConfigError, validate_config

CONF = config_dir()
GROUPS = ["data", "model", "pool", "optim", "trainer", "logger", "callbacks", "paths", "experiment"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_conf_dir_is_the_repo_conf():
    assert (CONF / "train.yaml").is_file()
    assert (Path(__file__).resolve().parents[1] / "conf") == CONF


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_validates(group, make_cfg):
    options = _options(group)
    if group in ("data", "pool", "model", "optim", "trainer", "logger", "callbacks"):
        assert options, f"conf/{group}/ is empty"
    for name in options:
        cfg = make_cfg([f"{group}={name}"], tiny=False)
        container = validate_config(cfg)
        assert container["task_name"], name
        if group not in ("paths", "experiment"):
            assert container[group] is not None or group in ("logger", "callbacks")


def test_default_config_is_the_main_job(make_cfg):
    cfg = make_cfg(tiny=False)
    c = validate_config(cfg)
    assert c["data"]["_target_"] == "hybridpool.data.SyntheticDataModule"
    assert c["model"]["backbone"]["_target_"] == "hybridpool.models.SmallCNN"
    assert c["pool"]["_target_"] == "hybridpool.pooling.pool_factory" and c["pool"]["spec"] == "hybrid"
    assert c["pool"]["mixing"] == "scalar"
    assert c["trainer"]["accelerator"] == "cpu"
    assert "wandb" in c["logger"] and "csv" in c["logger"]


@pytest.mark.parametrize("name", _options("pool"))
def test_pool_configs_build_through_the_classifier(name, make_cfg):
    import torch

    from hybridpool.models import Classifier, SmallCNN

    cfg = make_cfg([f"pool={name}", *(["pool.spatial_size=[8,6]"] if name == "flatten" else [])])
    backbone = SmallCNN(3, (8, 16))
    model = Classifier(backbone, instantiate(cfg.pool), num_classes=3)
    out = model(torch.randn(2, 3, 16, 12))
    assert out.shape == (2, 3)


def test_misspelled_key_appended_fails_with_the_key_and_a_suggestion(make_cfg):
    cfg = make_cfg(["+model.dropuot=0.1"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "model.dropuot" in msg and "did you mean 'dropout'" in msg


def test_misspelled_key_in_a_nested_target_and_top_level(make_cfg):
    cfg = make_cfg(["+optim.optimizer.weigth_decay=0.1", "+sead=3", "+trainer.max_epoch=3"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "optim.optimizer.weigth_decay" in msg and "'weight_decay'" in msg
    assert "sead" in msg and "'seed'" in msg
    assert "trainer.max_epoch" in msg and "'max_epochs'" in msg


def test_misspelled_override_is_refused_by_hydra(make_cfg):
    with pytest.raises(ConfigCompositionException, match="dropuot"):
        make_cfg(["model.dropuot=0.1"])


def test_negative_learning_rate_fails_with_a_clear_message(make_cfg):
    cfg = make_cfg(["optim.optimizer.lr=-0.1"])
    with pytest.raises(ConfigError, match=r"optim\.optimizer\.lr: must be > 0, got -0\.1"):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.optimizer.weight_decay=-1", "optim.optimizer.weight_decay: must be >= 0"),
        ("optim.pool_lr_mult=-2", "optim.pool_lr_mult: must be >= 0"),
        ("optim.scheduler=linear", "optim.scheduler: must be one of 'cosine', 'step', 'constant', got 'linear'"),
        ("model.dropout=1.5", "model.dropout: must be in [0, 1), got 1.5"),
        ("module.label_smoothing=1.0", "module.label_smoothing"),
        ("data.batch_size=0", "data.batch_size: must be >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs"),
        ("features.enabled=sometimes", "features.enabled"),
        ("seed=abc", "seed: must be an integer"),
    ],
)
def test_bad_values_fail_with_clear_messages(override, expected, make_cfg):
    cfg = make_cfg([override])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert expected in str(err.value)


def test_unknown_pool_name_lists_the_available_ones(make_cfg):
    with pytest.raises(MissingConfigException) as err:
        make_cfg(["pool=hybrid_scalr"])
    assert "hybrid_scalar" in str(err.value) and "gem" in str(err.value)


def test_unknown_pool_spec_in_the_classifier_lists_known_names():
    from hybridpool.models import Classifier, SmallCNN

    with pytest.raises(ValueError) as err:
        Classifier(SmallCNN(3, (8,)), "gemm", num_classes=2)
    assert "gem" in str(err.value) and "avg" in str(err.value)


def test_unknown_target_is_reported(make_cfg):
    cfg = make_cfg(["model.backbone._target_=hybridpool.models.NoSuchNet"])
    with pytest.raises(ConfigError, match=r"model\.backbone\._target_: cannot import"):
        validate_config(cfg)


def test_misspelled_base_key_of_a_subclass_datamodule_fails_with_a_suggestion(make_cfg):
    # SyntheticDataModule passes batch_size & co. on to ClassificationDataModule through **kwargs: the check
    # follows them there, and lists the accepted keys of both
    cfg = make_cfg(["+data.batch_sise=3"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "data.batch_sise: unknown key 'batch_sise'" in msg and "did you mean 'batch_size'" in msg
    accepted = msg.split("accepted: ")[1].split(", ")
    assert {"task", "num_train", "batch_size", "num_workers", "train_fraction"} <= set(accepted)
    assert "min_scale" not in accepted  # a base argument the synthetic task fixes (FIXED_ARGS)


def test_base_argument_a_dataset_fixes_is_an_unknown_key(make_cfg):
    cfg = make_cfg(["data=flowers102", "+data.val_fraction=0.1"])  # Flowers-102 has an official val split
    with pytest.raises(ConfigError, match=r"data\.val_fraction: unknown key 'val_fraction'"):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.train_fraction=0"], "data.train_fraction: must be in (0, 1], got 0"),
        (["data.normalize=zscore"], "data.normalize: must be one of 'imagenet', 'dataset', 'none', got 'zscore'"),
        (["data.task=stripes"], "data.task: must be one of 'texture', 'detail', 'finegrained', got 'stripes'"),
        (["data=cifar10", "data.num_workers=-1"], "data.num_workers: must be >= 0, got -1"),
        (["data=dtd", "data.partition=11"], "data.partition: must be in [1, 10], got 11"),
        (
            ["data=flowers17", "data.val_fraction=0.6", "data.test_fraction=0.5"],
            "data.val_fraction: must be < 1 - test_fraction = 0.5, got 0.6",
        ),
        (["optim.step_size=0"], "optim.step_size: must be >= 1, got 0"),
        (["module.log_pool_every_n_steps=-1"], "module.log_pool_every_n_steps: must be >= 0, got -1"),
    ],
)
def test_constructor_ranges_surface_with_the_key_path(overrides, expected, make_cfg):
    # the datamodules need no data here (cifar10/dtd/flowers17 are not read): the check builds nothing
    with pytest.raises(ConfigError) as err:
        validate_config(make_cfg([*overrides, "paths.data_dir=/nonexistent"]))
    assert expected in str(err.value)


def test_all_range_problems_are_reported_together(make_cfg):
    cfg = make_cfg(["data.batch_size=0", "optim.pool_lr_mult=-1", "module.label_smoothing=1.0"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert len(err.value.problems) == 3
    assert "data.batch_size: must be >= 1, got 0" in err.value.problems
    assert "optim.pool_lr_mult: must be >= 0, got -1" in err.value.problems
    assert "module.label_smoothing: must be in [0, 1), got 1.0" in err.value.problems


@pytest.mark.parametrize(("key", "value"), [("batch_size", 0), ("train_fraction", 1.5), ("normalize", "zscore")])
def test_the_datamodule_constructor_raises_the_same_range_error(key, value, make_cfg):
    from hybridpool.data import SyntheticDataModule

    with pytest.raises(ConfigError) as cfg_err:
        validate_config(make_cfg([f"data.{key}={value}"]))
    with pytest.raises(ValueError) as ctor_err:
        SyntheticDataModule(num_train=8, num_val=4, num_test=4, **{key: value})
    # built directly: "train_fraction must be in (0, 1], got 1.5"; in the config: "data.train_fraction: must be ..."
    assert str(ctor_err.value).startswith(f"{key} must be ")
    assert cfg_err.value.problems == [f"data.{key}: " + str(ctor_err.value).removeprefix(f"{key} ")]


def test_the_module_constructor_raises_the_same_range_error(make_cfg):
    from hybridpool.models import Classifier, SmallCNN
    from hybridpool.run.module import ClassificationModule

    with pytest.raises(ConfigError) as cfg_err:
        validate_config(make_cfg(["optim.pool_lr_mult=-2"]))
    with pytest.raises(ValueError) as ctor_err:
        ClassificationModule(Classifier(SmallCNN(3, (8,)), "avg", num_classes=2), pool_lr_mult=-2)
    assert str(ctor_err.value) == "pool_lr_mult must be >= 0, got -2"
    assert cfg_err.value.problems == ["optim.pool_lr_mult: must be >= 0, got -2"]
