"""``data=imagefolder`` picks its image size from the data when none is given, and says so; a given size far above
the images' own gets a warning with its cost and the fix; the size used lands in the run's record."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridpool.data import ImageFolderDataModule, build_datamodule
from hybridpool.data.folders import AUTO_SIZE_RANGE, infer_image_size, read_image_sizes, spread_sample


def _png(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    """A random grey PNG of ``size`` = (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(path)


def _folder(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> Path:
    for cls, per_image in sizes.items():
        for i, wh in enumerate(per_image):
            _png(root / cls / f"{i:02d}.png", wh, seed=i)
    return root


@pytest.fixture
def folder28(tmp_path: Path) -> Path:
    """``root/<class>/<image>.png``: 2 classes of 5 grey 28x28 PNGs (what a new user brings, e.g. Fashion-MNIST)."""
    return _folder(tmp_path / "f28", {"shirt": [(28, 28)] * 5, "shoe": [(28, 28)] * 5})


def _say_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[hybridpool]")]


# ----------------------------------------------------------------------------------------- inferred
@pytest.mark.parametrize("given", [None, "auto"])
def test_the_size_is_inferred_from_28px_images_and_said(folder28: Path, capsys, given) -> None:
    dm = build_datamodule("imagefolder", root=str(folder28), image_size=given, batch_size=4)
    assert dm.image_size == 28 and dm.image_size_inferred
    assert dm.describe()["image_size"] == 28  # what the run's record holds
    x, _ = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (4, 3, 28, 28)
    lines = _say_lines(capsys)
    assert len(lines) == 1, lines
    line = lines[0]
    assert "data.image_size=28 inferred from the data" in line
    assert "median short side 28 px of 10 sampled images over 2 classes, all 28x28 px" in line
    assert "override with data.image_size=<side>" in line
    assert "pretrained ImageNet backbone may want data.image_size=224" in line  # small: the hint for pretrained nets
    assert "warning" not in line


def test_the_default_of_the_class_and_of_the_config_is_to_infer(folder28: Path) -> None:
    from omegaconf import OmegaConf

    from hybridpool.arguments import accepted_arguments

    conf = Path(__file__).resolve().parents[2] / "conf" / "data" / "imagefolder.yaml"
    assert OmegaConf.load(conf)["image_size"] is None
    assert accepted_arguments(ImageFolderDataModule)[0]["image_size"].default is None
    assert ImageFolderDataModule(root=str(folder28)).image_size == 28


def test_the_config_check_accepts_null_and_auto_and_names_a_bad_value(folder28: Path, tmp_path: Path) -> None:
    from hybridpool.run import compose_config
    from hybridpool.run.config import ConfigError, validate_config

    def check(value: str) -> None:
        overrides = ["data=imagefolder", f"data.root={folder28}", f"data.image_size={value}"]
        validate_config(compose_config(overrides, output_dir=tmp_path / "out"))

    for value in ("null", "auto", "32"):
        check(value)
    with pytest.raises(ConfigError, match=r"data\.image_size: must be a number >= 1, or null / 'auto'"):
        check("big")


@pytest.mark.parametrize("bad", ["big", 0, -3, True])
def test_a_bad_image_size_is_refused_with_what_is_accepted(folder28: Path, bad) -> None:
    with pytest.raises(ValueError, match=r"image_size must be a number >= 1, or null / 'auto'"):
        build_datamodule("imagefolder", root=str(folder28), image_size=bad)


def test_mixed_sizes_take_the_median_short_side(tmp_path: Path, capsys) -> None:
    # short sides 20, 24, 28 | 30, 48, 64: the lower median is 28 (the short side of one of the images)
    root = _folder(tmp_path / "mixed", {"a": [(20, 20), (24, 40), (28, 28)], "b": [(40, 30), (64, 48), (64, 96)]})
    dm = build_datamodule("imagefolder", root=str(root))
    assert dm.image_size == 28 and dm.image_sizes.median_side == 28
    line = _say_lines(capsys)[0]
    assert "data.image_size=28 inferred" in line and "6 sampled images over 2 classes, 20x20 to 64x96 px" in line


def test_large_images_are_clipped_to_224(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "photos", {"a": [(500, 375)] * 2, "b": [(375, 500)] * 2})
    dm = build_datamodule("imagefolder", root=str(root))
    assert AUTO_SIZE_RANGE == (8, 224) and dm.image_size == 224
    line = _say_lines(capsys)[0]
    assert "data.image_size=224 inferred" in line and "median short side 375 px, clipped to 8..224, of 4" in line
    assert "pretrained" not in line


def test_tiny_images_are_clipped_to_8(tmp_path: Path) -> None:
    root = _folder(tmp_path / "tiny", {"a": [(4, 4)] * 2, "b": [(5, 6)] * 2})
    assert build_datamodule("imagefolder", root=str(root)).image_size == 8


def test_official_splits_are_sized_from_train(tmp_path: Path) -> None:
    _folder(tmp_path / "ds" / "train", {"a": [(32, 32)] * 3, "b": [(32, 32)] * 3})
    _folder(tmp_path / "ds" / "test", {"a": [(200, 200)] * 3, "b": [(200, 200)] * 3})
    dm = build_datamodule("imagefolder", root=str(tmp_path / "ds"), val_fraction=0.5)
    assert dm.image_size == 32 and len(dm.image_sizes.sizes) == 6


def test_no_readable_image_falls_back_to_224_and_says_so(tmp_path: Path, capsys) -> None:
    for cls in ("a", "b"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        (tmp_path / "bad" / cls / "x.png").write_bytes(b"not a png")
    dm = build_datamodule("imagefolder", root=str(tmp_path / "bad"))
    assert dm.image_size == 224 and dm.image_sizes.image_size is None
    assert "could be read, using 224; set data.image_size=<side>" in _say_lines(capsys)[0]


# ----------------------------------------------------------------------------------------- given
def test_a_given_size_is_respected_without_a_message(folder28: Path, capsys) -> None:
    dm = build_datamodule("imagefolder", root=str(folder28), image_size=24, batch_size=4)
    assert dm.image_size == 24 and not dm.image_size_inferred and dm.describe()["image_size"] == 24
    x, _ = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (4, 3, 24, 24)
    assert _say_lines(capsys) == []


def test_a_size_4x_the_images_gets_one_warning_with_the_cost_and_the_fix(folder28: Path, capsys) -> None:
    dm = build_datamodule("imagefolder", root=str(folder28), image_size=224)
    assert dm.image_size == 224  # respected: the user may need it (a pretrained backbone)
    lines = _say_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0] == (
        "[hybridpool] warning: data.image_size=224 is 8x the images' own size (median short side 28 px of 10 sampled "
        "images over 2 classes, all 28x28 px): each image is upsampled and costs about 64x the compute of "
        "data.image_size=28. Set data.image_size=28 (or data.image_size=null to infer it), unless the model needs "
        "the larger input (e.g. a pretrained ImageNet backbone)"
    )


def test_below_4x_there_is_no_warning(folder28: Path, capsys) -> None:
    build_datamodule("imagefolder", root=str(folder28), image_size=111)  # 3.96x
    assert _say_lines(capsys) == []
    build_datamodule("imagefolder", root=str(folder28), image_size=112)  # 4x
    assert "warning: data.image_size=112 is 4x" in _say_lines(capsys)[0]


def test_only_rank_zero_speaks(folder28: Path, capsys, monkeypatch) -> None:
    from pytorch_lightning.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert build_datamodule("imagefolder", root=str(folder28)).image_size == 28
    build_datamodule("imagefolder", root=str(folder28), image_size=224)
    assert _say_lines(capsys) == []


# ----------------------------------------------------------------------------------------- reading the sizes
def test_the_sample_is_bounded_and_spread_over_the_classes() -> None:
    big = [Path(f"big/{i:03d}") for i in range(100)]
    small = [Path(f"small/{i}") for i in range(2)]
    picked = spread_sample([big, small], 10)
    assert len(picked) == 10 and set(small) <= set(picked)  # the small class gives all it has
    from_big = [int(p.name) for p in picked if p.parent.name == "big"]
    assert from_big == [0, 14, 28, 42, 57, 71, 85, 99]  # evenly over the class, first to last
    many = [[Path(f"c{k}/0")] for k in range(200)]
    assert [p.parent.name for p in spread_sample(many, 3)] == ["c0", "c100", "c199"]
    assert spread_sample([big, small], 0) == [] and spread_sample([], 5) == []


def test_sizes_come_from_the_headers_without_decoding(tmp_path: Path) -> None:
    _png(tmp_path / "whole.png", (28, 20))
    full = (tmp_path / "whole.png").read_bytes()
    # the headers up to the first data chunk's type, none of its pixel data
    (tmp_path / "header_only.png").write_bytes(full[: full.index(b"IDAT") + 4])
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(OSError), Image.open(tmp_path / "header_only.png") as im:
        im.load()  # decoding fails: there are no pixels ...
    sizes = read_image_sizes([tmp_path / "whole.png", tmp_path / "header_only.png", tmp_path / "junk.png"])
    assert sizes == [(28, 20), (28, 20)]  # ... but the size is read; the junk file is left out
    assert infer_image_size([[tmp_path / "whole.png", tmp_path / "header_only.png"]]).image_size == 20


# ----------------------------------------------------------------------------------------- the record
def test_the_inferred_size_lands_in_the_runs_record(
    folder28: Path, make_cfg: Callable[..., object], capsys
) -> None:
    from hybridpool.run.train import train

    cfg = make_cfg(["data=imagefolder", f"data.root={folder28}", "data.batch_size=4", "test=false"], name="auto")
    train(cfg)
    out = capsys.readouterr().out
    assert "[hybridpool] data.image_size=28 inferred from the data" in out
    record = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert record["status"] == "completed"
    assert record["config"]["data"]["image_size"] is None and record["data"]["image_size"] == 28
