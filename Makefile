# Two commands set up everything: `make demo` and `make test`. Both create .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,edge,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qc demo --out demo-output $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(TEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/qc bench all --out bench-output

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo-output bench-output .pytest_cache
