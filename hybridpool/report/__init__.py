"""Results records -> statistics, tables, figures and the paper's generated files (``hybridpool-report``).

Reads runs (``results.json``, offline W&B files, a W&B project), never training code:

- :mod:`.runs`: find and read runs, group them into cells, list failed/missing runs.
- :mod:`.stats`: mean with t-interval and the two-level (split, seed) bootstrap, paired t-test and paired sign-flip
  permutation test (the decision rule: both reject after Holm), the exact Wilcoxon test (supplementary), d_z.
- :mod:`.analysis`: per-cell summaries over units (split, seed), comparisons with the baseline pool, test-set sizes.
- :mod:`.claims`, :mod:`.verdicts`: the study's claims (Q1a-Q4e), best pools chosen on validation, verdicts.
- :mod:`.arms`: the study's arms on CUB: the attention diagnosis (weights' learning rate, logits, entropy, the
  attention target) and the hybrid's Q1 design arms against the best single pool.
- :mod:`.tables`, :mod:`.figures`, :mod:`.latex`, :mod:`.summary`: LaTeX/Markdown/HTML tables, matplotlib
  figures, the paper's generated LaTeX, the summaries. :mod:`.cli`: the command line.
"""

from hybridpool.report.stats import cohens_dz, holm, mean_ci, paired_comparison, wilcoxon_signed_rank_exact

__all__ = ["cohens_dz", "holm", "mean_ci", "paired_comparison", "wilcoxon_signed_rank_exact"]
