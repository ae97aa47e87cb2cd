# comhe-bench. Stages: setup -> run (experiments/*.yaml) -> collect (results/) -> render (tables, figures).
# `make test` and `make table1` are the two commands a newcomer needs; both create the virtual environment.

PY       ?= python3
VENV     ?= .venv
PYTHON   := $(VENV)/bin/python
STAMP    := $(VENV)/.installed-$(shell cat requirements/ci.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv test test-slow bench help clean

help:
	@echo "make test          CPU test suite (creates $(VENV) on first use)"
	@echo "make bench         regulariser op counts and CPU timings (BENCHMARKS.md)"

venv: $(STAMP)

# torch is large: pip takes it from the local wheel cache where one exists. Bytecode is compiled explicitly
# because PYTHONDONTWRITEBYTECODE=1 on these machines would otherwise make every import of torch twice as slow.
$(STAMP): requirements/ci.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements/ci.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	PYTHONDONTWRITEBYTECODE= $(PYTHON) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(PYTHON) -m pytest -q

test-slow: $(STAMP)
	$(PYTHON) -m pytest -q -m slow

bench: $(STAMP)
	$(PYTHON) -m comhe.bench.regularizers

clean:
	rm -rf .pytest_cache build *.egg-info
