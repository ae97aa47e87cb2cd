# comhe-bench. Stages: setup -> run (experiments/*.yaml) -> collect (results/) -> render (tables, figures).
# `make test` and `make table1` are the two commands a newcomer needs; both create the virtual environment.

PY       ?= python3
VENV     ?= .venv
PYTHON   := $(VENV)/bin/python
STAMP    := $(VENV)/.installed-$(shell cat requirements/ci.txt pyproject.toml | cksum | cut -d' ' -f1)
# The torch build this machine's NVIDIA driver runs (comhe/train/devices.py: no driver, no option: PyPI's build, as
# always); TORCH_CUDA=cu126 (cu128, cpu, ...) names a flavour of download.pytorch.org/whl/ instead. Another build
# needs a new venv (pip keeps an installed torch==2.14.1): rm -rf .venv; make venv (docs/gpu.md).
TORCH_CUDA ?=
TORCH_PIP   = $(shell $(PY) comhe/train/devices.py --pip-index $(TORCH_CUDA))

.PHONY: venv test test-slow bench bench-gpu doctor help clean

help:
	@echo "make table1        reproduce a paper table (table1 ... table10) -> results/table1.{csv,md,tex}, figures/table1.png"
	@echo "make fig1 / fig2   the paper's figures -> figures/fig1.{png,pdf}"
	@echo "make table11       the GCN table on the CPU (Citeseer / Cora / Pubmed; COLUMNS=Cora for one graph)"
	@echo "make fig3          the GCN lambda sweep on Cora (validation and test accuracy against lambda)"
	@echo "make tables        every table; make figures: every figure"
	@echo "make report        render every table and figure, train nothing; results/SCORECARD.md: every claim"
	@echo "make smoke         every table and figure on the CPU with synthetic data (minutes) -> results/smoke/"
	@echo "make demo          real Fashion-MNIST on the CPU: Baseline vs HS-MHE vs RP-CoMHE, 3 seeds (~5.5 min, 2 cores)"
	@echo "make cifar10-cpu   real CIFAR-10 on 2 CPU cores: narrow CNN-9, 5 methods x 3 seeds (docs/cifar10-cpu.md)"
	@echo "                   no CIFAR-10 download possible: cifar10-images.tar.xz in ./data and dataset=cifar10_jpeg_export"
	@echo "make readme        the README's tables and figures (demo, Cora GCN + sweep, CPU CIFAR-10) from HEAD -> docs/readme/"
	@echo "  options: PROFILE=paper|quick|smoke SEEDS=3|0,4,5 JOBS=2 (default: 1 on CPU; on CUDA bench-gpu's best)"
	@echo "           NPROC=8 (GPUs per run, torchrun) DRY=1 (list runs, train nothing) COLLECT=1 (render only)"
	@echo "           COLUMNS=Cora (only these columns; the table shows the others as not run, with why)"
	@echo "           LAUNCHER=local|slurm SLURM='slurm_partition=gpu timeout_min=600'"
	@echo "           RUNNING=1 (tables also count runs still training, marked)"
	@echo "           RETRAIN_DAMAGED=1 (retrain finished runs whose records are damaged; see make verify)"
	@echo "           RESULTS=results FIGURES=figures (default with RESULTS=dir: dir/figures; PROFILE=smoke|quick:"
	@echo "           results/smoke|quick), COMHE_DATA=dir (data root) COMHE_OFFLINE=1 (no downloads), and config overrides"
	@echo "           as key=value (lr=0.05 reg.proj_dim=30) or ARGS='key=value ...'"
	@echo "make verify        check every run record of RESULTS against its checksums; names damaged files, exit 1"
	@echo "make test          CPU test suite (creates $(VENV) on first use)"
	@echo "make bench         regulariser op counts, CPU timings, engine CPU throughput (BENCHMARKS.md)"
	@echo "make bench-gpu     step times, MFU and the best JOBS on this CUDA card -> $(RESULTS)/bench/"
	@echo "make doctor        where this machine trains, its rates, every table's time here (< 3 min) -> $(RESULTS)/doctor.json"

venv: $(STAMP)

# torch is large: pip takes it from the local wheel cache where one exists. Bytecode is compiled explicitly
# because PYTHONDONTWRITEBYTECODE=1 on these machines would otherwise make every import of torch twice as slow.
$(STAMP): requirements/ci.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check $(patsubst %,% ,$(TORCH_PIP))-r requirements/ci.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	PYTHONDONTWRITEBYTECODE= $(PYTHON) -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	rm -f $(VENV)/.installed-*
	touch $@

# Lint, types, then the tests under coverage (child processes included: runner workers, `python -m comhe.train`,
# torchrun ranks). The coverage table lists the lines no test runs; CUDA-only lines are marked `pragma: cuda`.
test: $(STAMP)
	$(PYTHON) -m ruff check --quiet comhe tests
	$(PYTHON) -m mypy
	rm -f .coverage .coverage.*
	$(PYTHON) -m coverage run -m pytest -q
	$(PYTHON) -m coverage combine --quiet
	$(PYTHON) -m coverage report

test-slow: $(STAMP)
	$(PYTHON) -m pytest -q -m slow

# Regulariser ATen op counts + CPU times, CPU training throughput of the engine, the loop's host syncs and copies
# (BENCHMARKS.md, sections 1-2 and 5), one GCN run per method on Cora at 1 thread, PointNet step times.
bench: $(STAMP)
	$(PYTHON) -m comhe.bench.regularizers --out $(RESULTS)/bench/regularizers.csv
	$(PYTHON) -m comhe.bench.throughput --out $(RESULTS)/bench/throughput_cpu.csv
	$(PYTHON) -m comhe.bench.transfers
	$(PYTHON) -m comhe.bench.gcn --out $(RESULTS)/bench/gcn_cpu.csv
	$(PYTHON) -m comhe.bench.points --out $(RESULTS)/bench/points_cpu.csv

# Not on the venv stamp: GPU machines may have no network to build it. The venv's python if there is one, else the
# system python3 with torch installed. Writes $(RESULTS)/bench/best_jobs.json, the runner's default JOBS on this card.
bench-gpu:
	PYTHONPATH=. $(if $(wildcard $(PYTHON)),$(PYTHON),python3) -m comhe.bench.gpu --out $(RESULTS)/bench $(ARGS)

# Not on the venv stamp either (a GPU machine may have no network): the torch/CUDA/driver fit, CNN-9 and GCN rates,
# every table's estimated time on this machine; exit 1 when an NVIDIA GPU is visible but torch cannot use it.
doctor:
	PYTHONPATH=. $(if $(wildcard $(PYTHON)),$(PYTHON),python3) -m comhe.suite.doctor --results $(RESULTS) $(ARGS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* build *.egg-info

# ---- reproduction: run experiments/<target>.yaml -> collect run records -> render tables and figures ----------------
PROFILE  ?= paper
SEEDS    ?=
JOBS     ?=
NPROC    ?= 1
SLURM    ?=
LAUNCHER ?= local
RESULTS  ?= results
FIGURES  ?=
ARGS     ?=
# COLUMNS=Cora on the make command line only: shells and terminals export COLUMNS as the terminal width.
TABLE_COLUMNS = $(if $(filter command line,$(origin COLUMNS)),$(COLUMNS))
# Command-line assignments that are not this Makefile's own (upper-case) variables are config overrides:
# `make table1 lr=0.05 reg.proj_dim=30` passes `lr=0.05 reg.proj_dim=30` to the runner.
# COMHE_DATA / COMHE_OFFLINE are environment variables of the runs (make exports command-line variables to recipes).
OWN_VARS  := PROFILE SEEDS JOBS NPROC DRY COLLECT RUNNING RETRAIN_DAMAGED LAUNCHER SLURM RESULTS FIGURES ARGS PY VENV \
             PYTHON STAMP COLUMNS COMHE_DATA COMHE_OFFLINE TORCH_CUDA
SPACE     := $(subst ,, )
CMDLINE   := $(subst $$$$,$$,$(subst \$(SPACE),^,$(MAKEOVERRIDES)))  # make escapes a space as "\ ", a $ as $$
Q         := '
# RESULTS only when given (command line or environment): else the runner's default, results/ for the paper profile
# and results/<profile> for smoke and quick, so that a smoke run never replaces a real table.
RESULTS_FLAG = $(if $(filter-out file default,$(origin RESULTS)),--results $(RESULTS))
# Each override is one single-quoted shell word; a ' inside it is written '\'' so that no value can end the quoting.
OVERRIDES := $(foreach a,$(CMDLINE),$(if $(filter $(OWN_VARS),$(firstword $(subst =, ,$(a)))),,'$(subst $(Q),$(Q)\$(Q)$(Q),$(subst ^,$(SPACE),$(a)))'))
RUN_FLAGS  = --profile $(PROFILE) $(if $(JOBS),--jobs $(JOBS)) --nproc $(NPROC) --launcher $(LAUNCHER) \
             $(RESULTS_FLAG) $(if $(FIGURES),--figures $(FIGURES)) $(if $(RUNNING),--running) \
             $(if $(RETRAIN_DAMAGED),--retrain-damaged) \
             $(if $(SEEDS),--seeds $(SEEDS)) $(if $(DRY),--dry-run) $(if $(COLLECT),--collect-only) $(OVERRIDES) $(ARGS) \
             $(if $(SLURM),--slurm $(SLURM)) $(if $(TABLE_COLUMNS),--columns '$(TABLE_COLUMNS)')
EXPERIMENTS := table1 table2 table3 table4 table5 table6 table7 table8 table9 table10 table11 fig1 fig2 fig3

.PHONY: $(EXPERIMENTS) tables figures report smoke demo cifar10-cpu readme verify

$(EXPERIMENTS): $(STAMP)
	$(PYTHON) -m comhe.run $@ $(RUN_FLAGS)

tables: $(STAMP)
	$(PYTHON) -m comhe.run tables $(RUN_FLAGS)

figures: $(STAMP)
	$(PYTHON) -m comhe.run figures $(RUN_FLAGS)

# Every table and figure from the run records, and results/SCORECARD.md (+ figures/scorecard.png): every claim.
report: $(STAMP)
	$(PYTHON) -m comhe.run all $(RUN_FLAGS) --collect-only

# Every run record of $(RESULTS)/runs against its checksums (record.sha256): damaged files named, exit 1 if any.
verify: $(STAMP)
	$(PYTHON) -m comhe.run verify --results $(RESULTS)

# Every table and figure, CPU, synthetic data in the real formats, 2 seeds: every code path in a few minutes.
smoke: JOBS = 2
smoke: PROFILE = smoke
smoke: $(STAMP)
	$(PYTHON) -m comhe.run all $(RUN_FLAGS)

# Real Fashion-MNIST on the CPU (experiments/demo.yaml): two workers, one per core.
demo: JOBS = 2
demo: $(STAMP)
	$(PYTHON) -m comhe.run demo $(RUN_FLAGS)

# Real CIFAR-10 images on the CPU (experiments/cifar10_cpu.yaml): two workers, one per core. On the CIFAR-10 JPEG
# export instead of torchvision's CIFAR-10: make cifar10-cpu dataset=cifar10_jpeg_export (docs/cifar10-cpu.md).
cifar10-cpu: JOBS = 2
cifar10-cpu: $(STAMP)
	$(PYTHON) -m comhe.run cifar10_cpu $(RUN_FLAGS)

# The README's tables and figures (the Fashion-MNIST demo, table 11's Cora column, the fig3 sweep; Cora is
# downloaded on first use; the CPU CIFAR-10 experiment on the CIFAR-10 JPEG export: cifar10-images.tar.xz in the
# data root, ./data or $COMHE_DATA), from the code at HEAD: trained afresh whenever comhe/ or experiments/ changed
# since the last time (runs in results/readme/runs, ignored), then copied to docs/readme/ (tracked) with the commit
# they were made from in every file. Refuses a working tree with uncommitted changes: the stamp must be a commit.
README_DIR  := docs/readme
README_RUNS := results/readme
readme: JOBS = 2
readme: $(STAMP)
	@git diff --quiet HEAD -- . ':!$(README_DIR)' || { echo "error: commit first: the README's numbers are stamped \
	with a commit (git status)" >&2; exit 2; }
	@code=$$(git log -1 --format=%H -- comhe experiments); \
	test "$$(cat $(README_RUNS)/.code-commit 2>/dev/null)" = "$$code" || { rm -rf $(README_RUNS); \
	mkdir -p $(README_RUNS); echo $$code > $(README_RUNS)/.code-commit; }
	$(PYTHON) -m comhe.run demo --profile $(PROFILE) --jobs $(JOBS) --results $(README_RUNS) $(OVERRIDES)
	$(PYTHON) -m comhe.run fig3 --profile $(PROFILE) --jobs $(JOBS) --results $(README_RUNS) $(OVERRIDES)
	$(PYTHON) -m comhe.run table11 --columns Cora --profile $(PROFILE) --jobs $(JOBS) --results $(README_RUNS) \
	$(OVERRIDES)
	$(PYTHON) -m comhe.run cifar10_cpu --profile $(PROFILE) --jobs $(JOBS) --results $(README_RUNS) \
	dataset=cifar10_jpeg_export $(OVERRIDES)
	mkdir -p $(README_DIR)
	cp $(README_RUNS)/demo.md $(README_RUNS)/fig3.md $(README_RUNS)/table11.md $(README_RUNS)/cifar10_cpu.md \
	$(README_DIR)/
	cp $(README_RUNS)/figures/demo.png $(README_RUNS)/figures/demo-bars.png $(README_RUNS)/figures/fig3.png \
	$(README_RUNS)/figures/table11.png $(README_RUNS)/figures/cifar10_cpu.png \
	$(README_RUNS)/figures/cifar10_cpu-bars.png $(README_DIR)/

# A mistyped target (make tabel1) gets one line with the valid ones instead of make's bare "No rule to make target".
.DEFAULT:
	$(error unknown target '$@'; valid: $(EXPERIMENTS) tables figures report smoke demo cifar10-cpu readme verify test \
	test-slow bench bench-gpu doctor help clean; options are NAME=value (make help))
