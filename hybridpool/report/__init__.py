"""Results records -> statistics, tables, figures and the paper's generated files (``hybridpool-report``).

Reads runs (``results.json``, offline W&B files, a W&B project), never training code:

- :mod:`.runs`: find and read runs, group them into cells, list failed/missing runs.
- :mod:`.stats`: mean with t-interval, paired t and exact Wilcoxon tests, Cohen's d_z, Holm.
- :mod:`.analysis`: per-cell summaries and comparisons with the baseline pool.
- :mod:`.tables`, :mod:`.figures`, :mod:`.latex`, :mod:`.summary`: LaTeX/Markdown/HTML tables, matplotlib
  figures, the paper's generated LaTeX, the summaries. :mod:`.cli`: the command line.
"""

from hybridpool.report.stats import cohens_dz, holm, mean_ci, paired_comparison, wilcoxon_signed_rank_exact

__all__ = ["cohens_dz", "holm", "mean_ci", "paired_comparison", "wilcoxon_signed_rank_exact"]
