# `make demo`: set up .venv if needed, then run the demo. `make test`: the test suite.
VENV ?= .venv

.PHONY: demo test setup

demo: $(VENV)/.installed
	$(VENV)/bin/msa-lab demo --out results/demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@
