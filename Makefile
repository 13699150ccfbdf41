# Two commands do everything, each setting up what it needs first:
#   make demo   the main job (fetch data, train and evaluate; see README)
#   make test   the test suite
# VENV picks where the virtual environment lives (default .venv in this checkout).
VENV ?= .venv
BIN := $(VENV)/bin
export VENV

.PHONY: setup data demo test bench results clean

setup:
	@scripts/setup-env.sh $(VENV)

data: setup
	@scripts/setup-data.sh MNIST FashionMNIST

demo: data
	@scripts/demo.sh

test: data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

results: data
	@scripts/results.sh

bench: setup
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf .pytest_cache lightning_logs
