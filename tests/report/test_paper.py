"""`make paper` (scripts/build_paper.sh) builds a PDF from records; needs TeX (skipped where it is missing).

CI gets TeX from Debian: apt-get install --no-install-recommends texlive-latex-base texlive-latex-recommended latexmk
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _have_tex() -> bool:
    if not all(shutil.which(t) for t in ("latexmk", "pdflatex", "bibtex", "kpsewhich")):
        return False
    res = subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True, text=True, check=False)
    return bool(res.stdout.strip())


@pytest.mark.skipif(not _have_tex(), reason="TeX (latexmk, pdflatex, booktabs) is not installed")
def test_paper_builds_from_the_fixture_records(tmp_path):
    paper = tmp_path / "paper"
    paper.mkdir()
    for name in ("main.tex", "refs.bib"):
        shutil.copy(ROOT / "paper" / name, paper / name)
    env = {
        **os.environ,
        "PAPER_DIR": str(paper),
        "PAPER_RESULTS": str(tmp_path / "no-records-yet"),
        "PAPER_INSTALL_TEX": "0",
        "PYTHON": sys.executable,
    }
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_paper.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "PIPELINE CHECK" in res.stdout  # no study records: the fixture, labelled
    pdf = paper / "main.pdf"
    assert pdf.stat().st_size > 50_000
    log = (paper / "main.log").read_text(errors="replace")
    assert "undefined" not in log.lower().replace("undefined references", ""), "undefined references or citations"
    assert "There were undefined" not in log
    assert (paper / "generated" / "tables" / "results-fixture-synth-detail-smallcnn.tex").is_file()
