"""Spatial rearrangements of test images: is a classifier's accuracy robust to where things are in the image?

Global average pooling is said to be robust to the spatial arrangement of the input (Lin et al., "Network in
Network", ICLR 2014): it forgets where a feature fired. Two pure transforms probe that claim at test time
(:class:`hybridpool.run.module.ClassificationModule` with ``robustness={"shift": s, "grid": g}`` logs the accuracy on
each as ``test_shift/acc`` and ``test_grid/acc``):

- :func:`shift_image`: a translation by ``shift`` pixels right and down, zero fill (not circular): content leaves
  the image at the bottom and the right;
- :func:`permute_grid`: the image cut into ``grid x grid`` equal tiles, the tiles shuffled by a fixed seeded
  permutation that is never the identity (:func:`grid_permutation`): local content stays, the global layout goes.

Both act on every sample alike (a sample's output never depends on the others in the batch) and work on any
``(B, C, H, W)`` tensor, normalised or not: the zero fill is zero in the input's own units (after mean
subtraction, the mean colour).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["ROBUSTNESS_KEYS", "check_robustness", "grid_permutation", "permute_grid", "shift_image"]

#: keys of ClassificationModule(robustness=...): shift (pixels), grid (tiles per side), seed (of the permutation)
ROBUSTNESS_KEYS = ("shift", "grid", "seed")


def _check_images(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} expects images (B, C, H, W), got {shape}")


def _check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def shift_image(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Translate images ``shift`` pixels right and down, filling the uncovered top rows and left columns with 0.

    Args:
        x: ``(B, C, H, W)`` images.
        shift: pixels, ``0 <= shift < min(H, W)`` (``0`` returns a copy of ``x``).

    Returns:
        ``(B, C, H, W)``, same dtype and device: ``out[..., i, j] = x[..., i - shift, j - shift]`` where both
        indices are ``>= 0``, else ``0``. Not circular: the last ``shift`` rows and columns of ``x`` are lost.
    """
    _check_images(x, "shift_image")
    shift = _check_int(shift, "shift", 0)
    h, w = x.shape[-2:]
    if shift >= min(h, w):
        raise ValueError(f"shift must be smaller than the image (H={h}, W={w}), got {shift}")
    out = torch.zeros_like(x)
    out[..., shift:, shift:] = x[..., : h - shift, : w - shift]
    return out


def grid_permutation(grid: int, seed: int = 0) -> torch.Tensor:
    """A fixed permutation of the ``grid * grid`` tiles of a grid, never the identity.

    Args:
        grid: tiles per side, ``>= 2``.
        seed: seed of the (CPU) generator; the same ``(grid, seed)`` always gives the same permutation.

    Returns:
        ``(grid * grid,)`` int64: output tile ``i`` (row-major) is input tile ``perm[i]``.
    """
    grid = _check_int(grid, "grid", 2)
    n = grid * grid
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    while bool((perm == torch.arange(n)).all()):  # redraw, deterministically, until it moves something
        perm = torch.randperm(n, generator=generator)
    return perm


def permute_grid(x: torch.Tensor, grid: int, seed: int = 0, perm: torch.Tensor | None = None) -> torch.Tensor:
    """Cut images into ``grid x grid`` equal tiles and rearrange the tiles by a fixed permutation.

    When ``H`` or ``W`` is not a multiple of ``grid``, the remainder (the last ``H % grid`` rows and
    ``W % grid`` columns) is cropped first, so the output is smaller than the input.

    Args:
        x: ``(B, C, H, W)`` images, ``H, W >= grid``.
        grid: tiles per side, ``>= 2``.
        seed: seed of :func:`grid_permutation` (ignored when ``perm`` is given).
        perm: ``(grid * grid,)`` permutation to use instead; output tile ``i`` (row-major) is input tile
            ``perm[i]``.

    Returns:
        ``(B, C, grid * (H // grid), grid * (W // grid))``, same dtype and device.
    """
    _check_images(x, "permute_grid")
    grid = _check_int(grid, "grid", 2)
    b, c, h, w = x.shape
    th, tw = h // grid, w // grid
    if th < 1 or tw < 1:
        raise ValueError(f"grid={grid} needs images of at least {grid}x{grid} pixels, got H={h}, W={w}")
    if perm is None:
        perm = grid_permutation(grid, seed)
    perm = torch.as_tensor(perm, dtype=torch.long)
    if perm.shape != (grid * grid,) or not bool((perm.sort().values == torch.arange(grid * grid)).all()):
        raise ValueError(f"perm must be a permutation of range({grid * grid}), got {perm.tolist()}")
    tiles = x[..., : grid * th, : grid * tw].reshape(b, c, grid, th, grid, tw)
    tiles = tiles.permute(0, 1, 2, 4, 3, 5).reshape(b, c, grid * grid, th, tw)  # (B, C, tiles, th, tw), row-major
    tiles = tiles[:, :, perm.to(x.device)]
    return tiles.reshape(b, c, grid, grid, th, tw).permute(0, 1, 2, 4, 3, 5).reshape(b, c, grid * th, grid * tw)


def check_robustness(robustness: Mapping[str, Any] | None) -> dict[str, int]:
    """Validate ``robustness`` (``{"shift": s, "grid": g}``, optional ``"seed"``); return it as a plain dict.

    ``shift``: pixels, an int ``>= 1`` (``null``/absent: no shifted test); ``grid``: tiles per side, an int
    ``>= 2`` (``null``/absent: no grid test); ``seed``: seed of the tile permutation (default 0).
    """
    if robustness is None:
        return {}
    if not isinstance(robustness, Mapping):
        raise ValueError(f"robustness must be null or a mapping {{shift: int, grid: int}}, got {robustness!r}")
    unknown = sorted(set(robustness) - set(ROBUSTNESS_KEYS))
    if unknown:
        raise ValueError(f"robustness: unknown key(s) {unknown}; accepted: {', '.join(ROBUSTNESS_KEYS)}")
    out: dict[str, int] = {}
    for key, minimum in (("shift", 1), ("grid", 2), ("seed", 0)):
        value = robustness.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"robustness.{key} must be null or an int >= {minimum}, got {value!r}")
        out[key] = int(value)
    if "shift" not in out and "grid" not in out:
        raise ValueError(f"robustness needs shift and/or grid, got {dict(robustness)!r}; null turns it off")
    out.setdefault("seed", 0)
    return out
