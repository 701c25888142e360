#!/usr/bin/env bash
# `make paper`: results records -> paper/generated (hybridpool-report) -> paper/main.pdf (latexmk + pdflatex).
#
#   scripts/build_paper.sh                 # records from paper/results (fixture records while it has none:
#                                          # tests/report/fixtures/runs plus the fake 10-seed x 3-split study that
#                                          # tests/report/fixtures/make_study.py writes into a temporary folder)
#   PAPER_RESULTS=some/dir scripts/build_paper.sh
#   PAPER_INSTALL_TEX=0 scripts/build_paper.sh   # never install TeX; fail if it is missing
#   PAPER_DIR=/tmp/paper scripts/build_paper.sh   # build a copy of paper/ (main.tex, refs.bib) elsewhere (tests)
#
# TeX comes from Debian packages, installed here when missing (about 220 MB, about 1.5 minutes):
#   apt-get install --no-install-recommends texlive-latex-base texlive-latex-recommended latexmk
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
RESULTS="${PAPER_RESULTS:-paper/results}"
FIXTURE="tests/report/fixtures/runs"
PAPER_DIR="${PAPER_DIR:-paper}"
OUT="$PAPER_DIR/generated"
TEX_PACKAGES="texlive-latex-base texlive-latex-recommended latexmk"

say() { echo "[paper] $*"; }

have_tex() {
    command -v latexmk >/dev/null 2>&1 && command -v pdflatex >/dev/null 2>&1 \
        && command -v bibtex >/dev/null 2>&1 && kpsewhich booktabs.sty >/dev/null 2>&1
}

if ! have_tex; then
    if [ "${PAPER_INSTALL_TEX:-1}" != 1 ]; then
        say "TeX is missing (latexmk, pdflatex, bibtex, booktabs); install: apt-get install --no-install-recommends $TEX_PACKAGES"
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "TeX is missing and this is not a Debian/Ubuntu system: install a TeX distribution with latexmk, booktabs, natbib and hyperref"
        exit 1
    fi
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    say "installing TeX from Debian packages: $TEX_PACKAGES"
    t0=$(date +%s)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $TEX_PACKAGES >/dev/null
    say "TeX installed in $(( $(date +%s) - t0 )) s"
fi

if find "$RESULTS" -name results.json -print -quit 2>/dev/null | grep -q .; then
    SOURCES=("$RESULTS")
    SHOWN="$RESULTS"
else
    STUDY_TMP="$(mktemp -d)"
    trap 'rm -rf "$STUDY_TMP"' EXIT
    "$PY" tests/report/fixtures/make_study.py "$STUDY_TMP/study" >/dev/null
    SOURCES=("$FIXTURE" "$STUDY_TMP/study")
    SHOWN="$FIXTURE <tests/report/fixtures/make_study.py output>"
    say "no results records under $RESULTS: building from the fixture records ($FIXTURE and the fake study of" \
        "tests/report/fixtures/make_study.py), labelled PIPELINE CHECK"
fi

rm -rf "$OUT"
MPLBACKEND=Agg "$PY" -m hybridpool.report.cli "${SOURCES[@]}" --out "$OUT" --baseline avg --metric test/acc \
    --command "hybridpool-report $SHOWN --out paper/generated --baseline avg --metric test/acc"

cd "$PAPER_DIR"
latexmk -pdf -interaction=nonstopmode -halt-on-error -file-line-error -quiet main.tex >/dev/null || {
    say "latexmk failed; the end of $PAPER_DIR/main.log:"
    tail -n 40 main.log
    exit 1
}
info="$(du -k main.pdf | cut -f1) KiB"
command -v pdfinfo >/dev/null 2>&1 && info="$(pdfinfo main.pdf | awk '/^Pages:/ {print $2}') pages, $info"
say "built $PAPER_DIR/main.pdf ($info) from $SHOWN"
