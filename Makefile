# bcsub: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BCSUB := $(VENV)/bin/bcsub
DEMO := demo_run
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Test workers (pytest-xdist; one file per worker at a time, so each builds its shared fixtures once).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: install demo test test-fast test-floors lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# Train -> package -> local-score on the embedded sample (a few minutes on 2 CPU cores).
demo: install
	$(BCSUB) train --data data/sample/train.npz --preset demo --out $(DEMO)/run
	$(BCSUB) package $(DEMO)/run --out $(DEMO)/submission.zip
	$(BCSUB) local-score $(DEMO)/submission.zip --data data/sample/test.npz --severities 3 \
		--json $(DEMO)/score.json --report $(DEMO)/report

test: install
	$(PYTEST) -m "not floors"

test-fast: install
	$(PYTEST) -m "not slow and not floors"

# The training floors (tensorflow 2.16 / keras 3.11) in their own cached venv: before raising or lowering them.
test-floors: install
	$(PY) -m pytest -q -m floors

lint: install
	$(VENV)/bin/ruff check .

bench: install
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(DEMO) .pytest_cache
