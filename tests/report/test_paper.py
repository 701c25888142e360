"""`make paper` (scripts/build_paper.sh) builds a PDF from records; needs TeX (skipped where it is missing).

CI gets TeX from Debian: apt-get install --no-install-recommends texlive-latex-base texlive-latex-recommended latexmk
"""

from __future__ import annotations

import os
import re
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
    generated = paper / "generated"
    assert (generated / "tables" / "results-fixture-synth-detail-smallcnn.tex").is_file()  # the old fixture
    assert (generated / "tables" / "results-study-fg-flowers17-mobilenet-v2.tex").is_file()  # the fake study
    main = (generated / "tables" / "main.tex").read_text()
    assert "best validation epoch" in main and r"30 (3 $\times$ 10)" in main
    for fig in ("differences", "learned"):
        assert (generated / "figures" / f"{fig}.pdf").is_file()
    assert r"\newcommand{\hpVerdictQOneA}" in (generated / "macros.tex").read_text()
    # the study's arms on CUB: both generated tables are in the PDF (their labels resolved), with the fake study's arms
    aux = (paper / "main.aux").read_text(errors="replace")
    for name in ("attention-diagnosis", "q1-design-arms"):
        assert rf"\input{{\hpgenerated/tables/{name}}}" in (paper / "main.tex").read_text()
        assert rf"\newlabel{{tab:{name}}}" in aux, name
    diag = (generated / "tables" / "attention-diagnosis.tex").read_text()
    assert "before the fix" in diag and r"dot, $\tau$ = 1" in diag and "PIPELINE CHECK" in diag
    assert r"Hybrid (scalar) [init=gap]" in (generated / "tables" / "q1-design-arms.tex").read_text()


def test_every_macro_the_paper_reads_is_generated(study_report):
    """Every ``\\hp...`` macro main.tex uses is defined in the generated macros.tex (or by main.tex itself)."""
    tex = (ROOT / "paper" / "main.tex").read_text()
    used = set(re.findall(r"\\(hp[A-Za-z]+)", tex))
    own = set(re.findall(r"\\newcommand\{\\(hp[A-Za-z]+)\}", tex))
    generated = (study_report / "macros.tex").read_text()
    defined = set(re.findall(r"\\newcommand\{\\(hp[A-Za-z]+)\}", generated)) | {"hppipelinecheck"}
    missing = sorted(m for m in used - own - defined if not m.startswith("hppipelinecheck"))
    assert not missing, missing
    for name in ("hpDiagTargetVerdict", "hpDiagAttnOldEntropy", "hpDiagQattnNewAcc", "hpArmsGapInitVerdict"):
        assert name in used, name  # the diagnosis and design-arms prose read generated numbers


def test_the_results_and_limits_sections_type_no_number_and_read_the_verdicts():
    """main.tex's results and limits: every number comes from a macro or a generated file, every verdict too."""
    tex = (ROOT / "paper" / "main.tex").read_text()
    body = tex[tex.index(r"\section{Results}") : tex.index(r"\section{Relation to prior findings}")]
    stripped = re.sub(r"\\(ref|label|input|includegraphics|citep|cite)(\[[^]]*\])?\{[^}]*\}", "", body)
    stripped = re.sub(r"\\[A-Za-z]+", "", stripped)  # macro names (\hpVerdictQOneA, \textbf, ...)
    stripped = re.sub(r"\bQ[0-9][a-z]?\b", "", stripped)  # claim keys (Q1a) are names, not numbers
    assert not re.findall(r"[0-9]", stripped), re.findall(r".{30}[0-9].{30}", stripped)
    for key in ("QOneA", "QOneB", "QOneC", "QOneD"):
        assert rf"\hpVerdict{key}" in body and rf"\hpSummary{key}" in body
    for word in ("agrees", "contradicts"):
        assert word not in re.sub(r"\\emph\{[^}]*\}|verdict word \([^)]*\)", "", body.split(r"\paragraph{Q1")[1])
