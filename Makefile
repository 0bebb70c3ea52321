# Quick start: `make demo` (set up, run the main job), `make test` (set up, run the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench table2 mutants clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dln demo --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadscope

# Mutation testing of the toolkit itself (outside `make test`, ~20 min on 2 cores): each
# mutant of tools/mutants.py's catalogue applied to a throwaway copy, its tests run there.
mutants: $(STAMP)
	$(BIN)/python tools/mutants.py

bench: $(STAMP)
	$(BIN)/dln bench --profile --report out/bench

# Table 2 on the built-in held-out pairs: each trained model on each backend, beside the
# published rows; then both frameworks' training curves in one figure.
table2: $(STAMP)
	$(BIN)/dln table2 --data builtin --backend jax,nnx,torch \
	    --model sample=weights/sample/dln_sample.pth \
	    --model retrained_jax=weights/retrained_jax/dln_retrained_jax.pth \
	    --model retrained_torch=weights/retrained_torch/dln_retrained_torch.pth \
	    --report docs
	$(BIN)/python -m dln.training_log --out docs/training_curves.png \
	    JAX=weights/retrained_jax PyTorch=weights/retrained_torch

clean:
	rm -rf $(VENV) out .pytest_cache
