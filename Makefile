# The project's checks, as CI runs them (.ci/run): lint, types, the 1-second unit tier first so a
# broken change fails fast, then every tier. `make venv` makes the environment they run in.
PY ?= .venv/bin/python
PYTEST = $(PY) -m pytest -p no:cacheprovider

.PHONY: venv lint type test-unit test bench check

venv:
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet torch==2.13.0 'transformers>=4.50' 'accelerate>=1.1' -e '.[test]'

lint:
	$(PY) -m ruff check .

type:
	$(PY) -m mypy

test-unit:
	$(PYTEST) -q -m unit

test:
	$(PYTEST) -q

check: lint type test-unit test

# The benchmarks of DESIGN §9 (minutes; not part of `check`).
bench:
	$(PY) -m bench.spine
	$(PY) -m bench.api
	$(PY) -m bench.scheduler
