# The two set-up commands of the README: each creates .venv when absent and installs the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test package-check docs lint benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1 || $(BIN)/python -m pip install torch torchvision
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lightning-stepwise demo

test: $(STAMP)
	$(BIN)/python -m pytest
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	bash scripts/check_wheel.sh $(BIN)/python

package-check: $(STAMP)
	bash scripts/check_wheel.sh $(BIN)/python

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: $(STAMP)
	$(BIN)/ruff check lightning_stepwise tests benchmarks examples scripts

benchmark: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) stepwise-demo lightning_logs site dist build
