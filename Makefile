# The two commands a fresh clone needs: `make demo` and `make test`. Both create (or reuse) the
# virtual environment in .venv and install the package with what they need by themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aiopmem-installed
# The demo needs only the package and its progress extra: `make demo` on a fresh clone installs
# just that; `make test` installs everything (which the demo then reuses).
DEMO_STAMP := $(VENV)/.aiopmem-demo-installed
SOURCES := pyproject.toml setup.py $(wildcard src/aiopmem/_ffi/*.c src/aiopmem/_ffi/*.h src/aiopmem/_ffi/_build.py)
LINTED := src tests benchmarks examples

.PHONY: all demo test lint typecheck pytest bench docs dist clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalls (and recompiles the C parts) only when the build inputs change.
$(STAMP): $(SOURCES) | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,lint,docs,progress]'
	@touch $@ $(DEMO_STAMP)

$(DEMO_STAMP): $(SOURCES) | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[progress]'
	@touch $@

demo: $(DEMO_STAMP)
	$(PY) -m aiopmem demo

lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

docs: $(STAMP)
	$(PY) -m pdoc -o build/docs aiopmem aiopmem.sync aiopmem.testing

dist: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check build
	$(PY) -m build

clean:
	rm -rf build dist $(VENV) src/aiopmem/_ffi/*.so src/*.egg-info
