# Everything runs in a local virtual environment, created on first use.
PYTHON_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch / torchvision pair to install; override for another platform or CUDA version,
# e.g. `make install TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint quickstart digits bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check nfgen tests scripts

data/digits: install
	$(PY) scripts/make_digits.py data/digits

digits: data/digits

# A small real training job: Glow on scikit-learn's 8x8 digits, about a minute on 2 CPU cores.
quickstart: data/digits
	$(VENV)/bin/nfgen train --config quickstart.yaml --overwrite

clean:
	rm -rf runs .pytest_cache .ruff_cache
