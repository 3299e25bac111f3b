# Two commands set up everything: `make demo` and `make test`. Both create .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,edge,plc,plant,dev]'
	if pkg-config --exists gobject-introspection-1.0 cairo 2>/dev/null; then \
		$(PY) -m pip install --quiet -e '.[camera]'; \
	else echo "note: no libgirepository1.0-dev/libcairo2-dev: Aravis and GStreamer cameras left out (see .ci/run)"; fi
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qc demo --out demo-output $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(TEST_ARGS)

bench: $(STAMP)
	QC_BENCH_SAVE=1 $(PY) -m bench.synth
	QC_BENCH_SAVE=1 $(PY) -m bench.reject_timing
	QC_BENCH_SAVE=1 $(PY) -m bench.telemetry
	QC_BENCH_SAVE=1 $(PY) -m bench.collector
	QC_BENCH_SAVE=1 $(PY) -m bench.export
	$(VENV)/bin/qc demo --out bench-output/demo > /dev/null
	QC_BENCH_SAVE=1 $(VENV)/bin/qc bench --bundle bench-output/demo/bundle
	QC_BENCH_SAVE=1 $(VENV)/bin/qc bench --bundle bench-output/demo/bundle --station
	QC_BENCH_SAVE=1 $(VENV)/bin/qc bench --bundle bench-output/demo/bundle --plc
	QC_BENCH_SAVE=1 $(PY) -m bench.faults --bundle bench-output/demo/bundle
	QC_BENCH_SAVE=1 $(PY) -m bench.train_quality
	$(PY) -m bench.docs

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo-output bench-output .pytest_cache
