"""stratified_split / stratified_subsample: disjoint, covering, proportional, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from hybridpool.data import class_counts, stratified_split, stratified_subsample


def _labels() -> np.ndarray:
    # unequal class sizes, shuffled: 50, 31, 7, 3 items
    labels = np.repeat(np.arange(4), [50, 31, 7, 3])
    return labels[np.random.default_rng(5).permutation(labels.size)]


def test_split_is_disjoint_covering_and_sorted() -> None:
    labels = _labels()
    parts = stratified_split(labels, (0.6, 0.2, 0.2), seed=0)
    assert len(parts) == 3
    joined = np.concatenate(parts)
    assert joined.size == labels.size
    assert np.array_equal(np.sort(joined), np.arange(labels.size))
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)


def test_split_is_stratified() -> None:
    labels = _labels()
    fractions = (0.6, 0.2, 0.2)
    parts = stratified_split(labels, fractions, seed=3)
    sizes = np.bincount(labels)
    for j, (p, f) in enumerate(zip(parts, fractions, strict=True)):
        counts = np.bincount(labels[p], minlength=4)
        # every class in every part (even the class of 3 items), close to its share
        assert np.all(counts >= 1)
        assert np.all(np.abs(counts - sizes * f) < (1.0 if j else 2.0)), (j, counts, sizes * f)


def test_split_totals_are_exact_with_many_small_classes() -> None:
    # 100 classes of 26 items: per-class rounding of 10% would give 300 instead of 260
    labels = np.repeat(np.arange(100), 26)
    train, val = stratified_split(labels, (0.9, 0.1), seed=0)
    assert val.size == 260 and train.size == 2340
    assert set(np.bincount(labels[val], minlength=100).tolist()) <= {2, 3}
    keep = stratified_subsample(labels, 0.1, seed=1)
    assert keep.size == 260


def test_split_is_seeded() -> None:
    labels = _labels()
    a = stratified_split(labels, (0.7, 0.3), seed=11)
    b = stratified_split(labels, (0.7, 0.3), seed=11)
    c = stratified_split(labels, (0.7, 0.3), seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_subsample_is_stratified_and_full_at_one() -> None:
    labels = np.repeat(np.arange(5), 40)
    assert class_counts(labels[stratified_subsample(labels, 0.1, seed=2)], 5) == [4] * 5
    assert class_counts(labels[stratified_subsample(labels, 0.2, seed=2)], 5) == [8] * 5
    assert np.array_equal(stratified_subsample(labels, 1.0, seed=2), np.arange(labels.size))


def test_subsample_keeps_every_class() -> None:
    labels = np.repeat(np.arange(4), [100, 4, 2, 1])
    keep = stratified_subsample(labels, 0.05, seed=0)
    assert class_counts(labels[keep], 4)[1:] == [1, 1, 1]
    assert class_counts(labels[keep], 4)[0] in (4, 5, 6)


@pytest.mark.parametrize("fractions", [(0.5, 0.4), (0.8, 0.3), (1.2, -0.2), ()])
def test_bad_fractions_raise(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="fractions"):
        stratified_split([0, 1, 0, 1], fractions, seed=0)


def test_bad_subsample_fraction_raises() -> None:
    with pytest.raises(ValueError, match="fraction"):
        stratified_subsample([0, 1], 0.0, seed=0)
