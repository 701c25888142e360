"""Seeded, stratified splits of a labelled index set (pure numpy, no torch).

Datasets without an official split (Flowers-17, DTD, a plain image folder) get a train/val/test split from
:func:`stratified_split`; datasets with an official train/test split get their validation set carved out of
the official training set the same way, and ``train_fraction`` subsamples the training split with
:func:`stratified_subsample`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["class_counts", "stratified_split", "stratified_subsample"]


def _check_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D sequence of integers, got an array of shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _allocate(sizes: np.ndarray, fractions: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Integer counts ``(C, J)``: class ``c`` gives ``counts[c, j]`` of its ``sizes[c]`` items to part ``j``.

    Parts ``j >= 1`` use cumulative rounding over the classes (in ``order``): each class gets its share
    ``sizes[c] * fractions[j]`` up to less than one item, and the part's total is exactly
    ``round(sizes.sum() * fractions[j])``. Part 0 takes the rest. Afterwards every part with a positive
    fraction gets at least one item of each class that has at least as many items as there are such parts.
    """
    num_classes, num_parts = sizes.size, fractions.size
    counts = np.zeros((num_classes, num_parts), dtype=np.int64)
    for j in range(1, num_parts):
        cum = np.floor(np.cumsum(sizes[order] * fractions[j]) + 0.5 + 1e-9).astype(np.int64)
        counts[order, j] = np.diff(np.concatenate([[0], cum]))
    positive = np.flatnonzero(fractions > 0)
    for c in range(num_classes):
        while counts[c, 1:].sum() > sizes[c]:  # tiny classes: never give away more than the class has
            counts[c, 1 + int(np.argmax(counts[c, 1:]))] -= 1
        counts[c, 0] = sizes[c] - counts[c, 1:].sum()
        if sizes[c] >= positive.size:
            for j in positive[counts[c, positive] == 0]:
                counts[c, int(np.argmax(counts[c]))] -= 1
                counts[c, j] += 1
    return counts


def stratified_split(labels: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into disjoint parts whose class proportions follow ``fractions``.

    Args:
        labels: ``(N,)`` integer class label of every item.
        fractions: one non-negative fraction per part, summing to 1 (e.g. ``(0.6, 0.2, 0.2)``).
        seed: seed of the shuffle inside each class (and of the class order used for rounding);
            same seed -> identical split.

    Returns:
        One sorted ``int64`` index array per part. The parts are disjoint and together cover every index.
        Every part after the first holds exactly ``round(N * fractions[j])`` items and, within each class
        ``c`` of ``n_c`` items, ``n_c * fractions[j]`` items up to less than one; the first part takes the
        rest of each class. Exception: each part with a positive fraction gets at least one item of every
        class that has at least as many items as there are such parts.
    """
    arr = _check_labels(labels)
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or fr.size == 0:
        raise ValueError(f"fractions must be a non-empty 1-D sequence, got {fractions!r}")
    if np.any(fr < 0) or not np.isclose(fr.sum(), 1.0, atol=1e-6):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {list(fr)} (sum {fr.sum():.6f})")
    rng = np.random.default_rng(seed)
    classes = np.unique(arr)
    members = [np.flatnonzero(arr == cls) for cls in classes]
    members = [m[rng.permutation(m.size)] for m in members]
    sizes = np.array([m.size for m in members], dtype=np.int64)
    counts = _allocate(sizes, fr, rng.permutation(classes.size))
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    for c, m in enumerate(members):
        bounds = np.concatenate([[0], np.cumsum(counts[c])])
        for j in range(fr.size):
            parts[j].append(m[bounds[j] : bounds[j + 1]])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def stratified_subsample(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified ``fraction`` of ``labels``.

    Args:
        labels: ``(N,)`` integer labels.
        fraction: in ``(0, 1]``; ``1`` returns every index.
        seed: seed of the per-class shuffle.

    Returns:
        ``(M,)`` sorted ``int64`` indices into ``labels``: ``M = round(N * fraction)`` (plus at most one per
        class that would otherwise be absent: every class keeps at least one item), each class within one
        item of its share.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    arr = _check_labels(labels)
    if fraction == 1.0:
        return np.arange(arr.size, dtype=np.int64)
    keep = stratified_split(arr, (1.0 - fraction, fraction), seed)[1]
    missing = np.setdiff1d(np.unique(arr), arr[keep])
    if missing.size:  # classes too small for their share: keep one (seeded) item of each
        rng = np.random.default_rng([seed, 1])
        extra = [rng.choice(np.flatnonzero(arr == cls)) for cls in missing]
        keep = np.sort(np.concatenate([keep, np.asarray(extra, dtype=np.int64)]))
    return keep


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[int]:
    """Number of items of each class ``0..num_classes-1`` (a plain list, JSON-serialisable)."""
    arr = _check_labels(labels)
    return [int(c) for c in np.bincount(arr, minlength=num_classes)[:num_classes]]
