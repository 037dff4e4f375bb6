# The README's commands. `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Where torch comes from: pip's own index unless set (CI: https://download.pytorch.org/whl/cpu).
TORCH_INDEX ?=
CONFIG ?= configs/train.yaml
ACCELERATE_CONFIG ?= configs/accelerate.yaml
DEMO_RUN := runs/demo

.PHONY: install train demo test test-fast lint format docs docs-serve clean

install: $(BIN)/esmtune

# torch first, pinned, so pip does not reach for a newer (CUDA) build; then the package.
$(BIN)/esmtune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

train: install
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) -m esmtune train --config $(CONFIG) $(ARGS)

# The demo needs no network: a random-initialised small ESM2 on the bundled data.
demo: export HF_HUB_OFFLINE = 1
demo: install
	@rm -rf $(DEMO_RUN)
	$(BIN)/esmtune data check examples/scl3
	$(BIN)/esmtune train --config configs/demo.yaml
	$(BIN)/esmtune evaluate $(DEMO_RUN)
	$(BIN)/esmtune predict $(DEMO_RUN) examples/scl3/test/Mitochondrion.fasta --top-k 3 -o $(DEMO_RUN)/predictions_mitochondrion.tsv
	@head -n 6 $(DEMO_RUN)/predictions_mitochondrion.tsv | cut -f1-4
	$(BIN)/esmtune baseline examples/scl3
	@echo
	@echo "Results in $(DEMO_RUN)/: metrics.json (validation), eval/test/ (test metrics, confusion_matrix.png),"
	@echo "predictions_mitochondrion.tsv, tensorboard/ (tensorboard --logdir $(DEMO_RUN)/tensorboard)."

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

# The inner loop: everything but the slow groups (see the markers in pyproject.toml).
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m "not (multiprocess or browser or export or end_to_end)"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The documentation site (mkdocs.yml, docs/): warnings are errors; the site lands in build/site/.
docs: install
	$(BIN)/mkdocs build --strict

docs-serve: install
	$(BIN)/mkdocs serve

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
