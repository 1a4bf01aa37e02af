# `make demo`: set up .venv if needed, then run the demo. `make test`: the test suite.
# `make strip-notebooks`: clear the notebooks' outputs (a JupyterLab autosave) before a commit.
VENV ?= .venv

.PHONY: demo test setup strip-notebooks

demo: $(VENV)/.installed
	$(VENV)/bin/msa-lab demo --out results/demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest

setup: $(VENV)/.installed

strip-notebooks: $(VENV)/.installed
	$(VENV)/bin/python scripts/strip_notebooks.py

# Set-up that fails exits non-zero, so .installed is not touched and the next make tries again.
$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@
