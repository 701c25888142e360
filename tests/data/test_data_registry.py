"""Registry, missing-data errors, data-root resolution and the conf/data configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hybridpool.arguments import accepted_arguments
from hybridpool.data import (
    DATA_ROOT_ENV,
    DATAMODULES,
    PRESETS,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    SyntheticDataModule,
    build_datamodule,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
FILE_DATASETS = [
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "cub",
    "flowers17",
    "flowers102",
    "dtd",
    "aircraft",
    "cars",
    "pets",
]
DOWNLOADABLE = {"fashion_mnist", "cifar10", "cifar100", "flowers102", "dtd", "aircraft", "pets"}


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown datamodule 'imagenet'") as err:
        build_datamodule("imagenet")
    for name in ("cub", "flowers17", "synth_texture", "fashion_mnist"):
        assert name in str(err.value)


def test_presets_pick_the_task() -> None:
    for name, preset in PRESETS.items():
        dm = build_datamodule(name, num_train=8, num_val=4, num_test=4)
        assert isinstance(dm, SyntheticDataModule) and dm.task == preset["task"] and dm.name == name


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_missing_dataset_says_where_and_how(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        build_datamodule(name, root=str(missing))
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(missing) in msg  # where it looked
    assert DATA_ROOT_ENV in msg and "data.root" in msg  # how to point at it
    assert "http" in msg  # where to get it
    if name in DOWNLOADABLE:
        assert "download=true" in msg


def test_missing_image_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "absent"))):
        build_datamodule("imagefolder", root=str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no <class>/<image> files"):
        build_datamodule("imagefolder", root=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="root"):
        build_datamodule("imagefolder", root=None)


def test_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env_root"))
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "env_root" / "CUB_200_2011"))):
        build_datamodule("cub")
    monkeypatch.delenv(DATA_ROOT_ENV)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "data" / "flowers17"))):
        build_datamodule("flowers17")


def test_download_flag_defers_the_check(tmp_path: Path) -> None:
    # with download=true nothing is fetched at construction; num_classes is known anyway
    dm = FashionMNISTDataModule(root=str(tmp_path), download=True)
    assert dm.num_classes == 10 and dm.in_channels == 1
    assert "download" not in accepted_arguments(DATAMODULES["cars"])[0]  # torchvision cannot


@pytest.mark.parametrize(
    "bad",
    [
        {"train_fraction": 0.0},
        {"train_fraction": 1.5},
        {"normalize": "zscore"},
        {"batch_size": 0},
        {"val_fraction": 1.0},
        {"channels": 2},
    ],
)
def test_bad_arguments_raise(bad: dict, tmp_path: Path) -> None:
    # arguments are checked before the data is looked for
    with pytest.raises(ValueError, match=next(iter(bad))):
        FashionMNISTDataModule(root=str(tmp_path), **bad)


def _conf_files() -> list[Path]:
    return sorted(CONF.glob("*.yaml"))


def test_every_registered_name_has_a_config() -> None:
    stems = {p.stem for p in _conf_files()}
    assert stems == set(DATAMODULES) - {"synthetic"}


@pytest.mark.parametrize("path", _conf_files(), ids=lambda p: p.stem)
def test_config_keys_are_constructor_arguments(path: Path) -> None:
    """Config mirrors code: ``_target_`` is the registered class and the keys are exactly its arguments (its own
    and, through ``**kwargs``, its base's, less those it fixes)."""
    node = OmegaConf.load(path)
    cls = DATAMODULES[path.stem]
    assert node["_target_"] == f"hybridpool.data.{cls.__name__}"
    params, takes_others = accepted_arguments(cls)
    assert set(node.keys()) - {"_target_"} == set(params) and not takes_others
    assert OmegaConf.to_container(node)["seed"] == "${seed}"
    if "root" in node and path.stem != "imagefolder":
        assert OmegaConf.to_container(node)["root"] == "${paths.data_dir}"
    for key, value in PRESETS.get(path.stem, {}).items():
        assert node[key] == value


@pytest.mark.parametrize("name", ["synth_texture", "synth_detail", "synth_finegrained"])
def test_synthetic_configs_instantiate(name: str, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    cfg = OmegaConf.create(
        {"paths": {"data_dir": str(tmp_path)}, "seed": 5, "data": OmegaConf.load(CONF / f"{name}.yaml")}
    )
    cfg.data.num_train, cfg.data.num_val, cfg.data.num_test = 16, 8, 8
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, SyntheticDataModule) and dm.seed == 5 and dm.name == name
    assert dm.describe()["num_samples"] == {"train": 16, "val": 8, "test": 8}


def test_file_config_resolves_root(data_root: Path) -> None:
    from hydra.utils import instantiate

    cfg = OmegaConf.create(
        {"paths": {"data_dir": str(data_root)}, "seed": 2, "data": OmegaConf.load(CONF / "flowers17.yaml")}
    )
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.root == data_root.absolute() and dm.num_classes == 17 and dm.split_seed == 2


def test_fixed_base_argument_is_refused(tmp_path: Path) -> None:
    # Fashion-MNIST has an official test split and does not scale its crops: it fixes these base arguments
    for arg, value in (("test_fraction", 0.2), ("min_scale", 0.5)):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{arg}'"):
            FashionMNISTDataModule(root=str(tmp_path), download=True, **{arg: value})
    assert {"test_fraction", "min_scale"}.isdisjoint(accepted_arguments(FashionMNISTDataModule)[0])


def test_check_args_is_the_constructors_check(tmp_path: Path) -> None:
    # without building anything, the problems the constructor raises the first of
    problems = FashionMNISTDataModule.check_args(batch_size=0, train_fraction=2.0, crop_padding=3)
    assert [str(p) for p in problems] == ["batch_size must be >= 1, got 0", "train_fraction must be in (0, 1], got 2.0"]
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        FashionMNISTDataModule(root=str(tmp_path), batch_size=0, train_fraction=2.0)
    assert FashionMNISTDataModule.check_args(batch_size=8) == []
