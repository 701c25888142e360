# Two entry points for a fresh machine (see README):
#   make run    set everything up, then run the main job
#   make test   set everything up, then run the test suite
# On a machine whose pip should resolve torch itself: make test TORCH_PIN=

PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev
BIN := $(VENV)/bin

.PHONY: setup run test lint bench paper clean

setup: $(VENV)/.installed

# The torch pair is installed first and named again with the project, so pip never swaps in another torch.
# editable_mode=compat puts the checkout on sys.path, where Hydra's plugin scan finds hydra_plugins/ (our launcher).
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(strip $(TORCH_PIN)),$(BIN)/python -m pip install --quiet $(TORCH_PIN))
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]' $(TORCH_PIN) --config-settings editable_mode=compat
	touch $@

run: setup
	$(BIN)/hybridpool-train

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python scripts/bench_pooling.py

# Tables and figures from the committed results records (paper/results), then paper/main.pdf (installs TeX if missing)
paper: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/build_paper.sh

clean:
	rm -rf $(VENV) outputs multirun wandb .pytest_cache
