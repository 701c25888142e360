"""Fit the polynomial coefficients used by hybridpool/pooling/kernels/reference.py for fast float32 log and exp.

Run: python scripts/fit_fast_math.py   (prints the coefficient tuples and their maximum errors)
"""

import numpy as np


def fit(fn, lo: float, hi: float, degree: int, relative: bool) -> tuple[list[float], float]:
    """Least-squares polynomial fit on Chebyshev nodes; returns (coefficients highest power first, max error)."""
    k = np.arange(4000)
    nodes = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.pi * (k + 0.5) / k.size)
    target = fn(nodes)
    weights = 1.0 / np.abs(target) if relative else np.ones_like(target)
    coeffs = np.polyfit(nodes, target, degree, w=weights)
    grid = np.linspace(lo, hi, 200001)
    err = np.abs(np.polyval(coeffs, grid) - fn(grid))
    if relative:
        err = err / np.abs(fn(grid))
    return [float(c) for c in coeffs], float(err.max())


if __name__ == "__main__":
    log2_coeffs, log2_err = fit(lambda t: np.log2(1.0 + t), np.sqrt(0.5) - 1.0, np.sqrt(2.0) - 1.0, 8, False)
    exp2_coeffs, exp2_err = fit(np.exp2, -0.5, 0.5, 5, True)
    print(f"_LOG2_COEFFS = {tuple(log2_coeffs)}  # log2(1 + t), max abs error {log2_err:.2e}")
    print(f"_EXP2_COEFFS = {tuple(exp2_coeffs)}  # 2**f, max rel error {exp2_err:.2e}")
