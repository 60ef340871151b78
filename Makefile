# Set-up and the two quick-start commands. Everything the project needs is installed
# from here, so a fresh clone works with `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup train test test-all lint format smoke data clean

setup: $(STAMP)

# pip (not uv/poetry): on these machines pip takes torch/torchvision from local wheels.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Real Fashion-MNIST without internet: Debian/Ubuntu's package (needs root or sudo).
data:
	@if [ -f $(FASHION_MNIST) ]; then echo "Fashion-MNIST found in /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Cannot install dataset-fashion-mnist (no root/sudo); cnntrain will try data.root and a download."; fi

# The main job: the book's LeNet on Fashion-MNIST, 10 epochs.
train: setup data
	$(BIN)/cnntrain $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff (settings in pyproject.toml): what CI checks; `make format` rewrites the files to pass.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-all: setup data
	$(BIN)/python -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

smoke: setup
	$(BIN)/cnntrain experiment=smoke

clean:
	rm -rf $(VENV) outputs
