# Two commands on a fresh machine (python3 and make): `make demo`, `make test`.
# .venv is created when missing and reinstalled when pyproject.toml or constraints.txt changes;
# the CPU build of torch is installed first (an open range could pull a multi-GB CUDA build).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
DEMO_DIR ?= runs/demo

.PHONY: demo test compare bench

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e ".[test,baselines]"
	touch $(STAMP)

demo: $(STAMP)  ## the main job on simulated data, into $(DEMO_DIR) (refused if it holds another run)
	MPLBACKEND=Agg $(BIN)/python -m scripts.studies.grid_lines_torch_runner --output-dir $(DEMO_DIR) \
		--grad-clip 10 --no-enable-progress-bar

test: $(STAMP)  ## the whole suite, integration runs included
	MPLBACKEND=Agg $(BIN)/python -m pytest -n auto

compare: $(STAMP)  ## the three architectures and the iterative reference on one dataset, into runs/compare
	MPLBACKEND=Agg $(BIN)/python -m scripts.studies.grid_lines_compare_wrapper --architectures cnn,fno,hybrid \
		--baseline 50,200 --output-dir runs/compare --torch-grad-clip 10 --no-torch-enable-progress-bar

bench: $(STAMP)  ## training-step throughput (run it on an otherwise idle machine)
	$(BIN)/python -m benchmarks.bench_throughput --contention --precisions 32-true,bf16-mixed
