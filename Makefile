# xdxd — set-up, demo, tests, benchmarks.  `make demo` and `make test` are all a new machine needs.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
# Without a GPU, torch comes from PyTorch's CPU-only index, never the multi-GB CUDA build.
# A wheel that pip already finds locally (pip's find-links) is tried first, offline.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple)
COD    ?= ../shared/benchmarks/cod-dev
DMIN   ?= 1.0 1.5 2.0
# the default subset: cod-dev organic with ≤ 15 non-H atoms (17 structures), 60 s sampler budget;
# BENCH_ARGS= (empty) runs all 78 organic structures
BENCH_ARGS ?= --max-atoms 15 --time-budget 60 --threads 1 --jobs 2

.PHONY: install test test-all demo bench bench-diffusion bench-measured bench-molecule clean data synth train-gpu train-cpu

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-index --no-deps "$(TORCH)" 2>/dev/null \
	  || $(BIN)/pip install -q --no-deps $(TORCH_INDEX) "$(TORCH)"
	$(BIN)/pip install -q "$(TORCH)"  # torch's own dependencies; torch itself is already there
	$(BIN)/pip install -q -e ".[dev,synth]"
	$(BIN)/python bin/check-install
	touch $@

test: install
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: install
	$(BIN)/python -m pytest -q tests

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bin/demo examples/1100656.cif

# dual-space sampler on cod-dev organic at each d_min: per-structure rows + summary table
bench: install
	$(BIN)/xdxd-bench $(COD) --class organic $(foreach d,$(DMIN),--dmin $(d)) --method dualspace \
	  --output bench.jsonl --summary-out bench-summary.json --markdown $(BENCH_ARGS)

# diffusion vs dual-space at 2.0 Å and equal wall time per structure
bench-diffusion: install
	$(BIN)/xdxd-bench $(COD) --class organic --dmin 2.0 --method dualspace --method diffusion \
	  --output bench-diffusion.jsonl --summary-out bench-diffusion-summary.json \
	  --markdown $(BENCH_ARGS)

# both samplers on the real measured data sets, reflections cut at 2.0 Å, equal wall time
MEASURED ?= ../shared/benchmarks/measured
bench-measured: install
	$(BIN)/xdxd-bench $(MEASURED) --data measured --dmin 2.0 --method dualspace --method diffusion \
	  --output bench-measured.jsonl --summary-out bench-measured-summary.json \
	  --markdown --time-budget 60 --threads 1 --jobs 2

# the known-molecule search: each structure's molecules named (SMILES read off its model),
# cod-dev organic of every size at MOL_DMIN, then the measured data sets at 2.0 Å
MOL_DMIN ?= 1.5 2.0 2.5 3.0
MOL_ARGS ?= --time-budget 60 --threads 1 --jobs 2
bench-molecule: install  # (the first run's exit status 1, some structures failed, does not stop the second)
	-$(BIN)/xdxd-bench $(COD) --class organic $(foreach d,$(MOL_DMIN),--dmin $(d)) --method molecule \
	  --molecules-from-reference --output bench-molecule.jsonl \
	  --summary-out bench-molecule-summary.json --markdown $(MOL_ARGS)
	$(BIN)/xdxd-bench $(MEASURED) --data measured --dmin 2.0 --method molecule \
	  --molecules-from-reference --output bench-molecule-measured.jsonl \
	  --summary-out bench-molecule-measured-summary.json --markdown $(MOL_ARGS)

# training data: MOSES SMILES (downloaded once), then SYNTH_COUNT crystals packed from them
SYNTH       ?= data/synth
SYNTH_COUNT ?= 2000
SYNTH_SEED  ?= 1

data: data/moses.smi

data/moses.smi: | install
	PATH="$(CURDIR)/$(BIN):$$PATH" bin/fetch-moses-smiles data/moses.smi

synth: install data
	$(BIN)/xdxd-synth --smiles data/moses.smi --count $(SYNTH_COUNT) --output $(SYNTH) \
	  --seed $(SYNTH_SEED) --jobs 2

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

# continue training the shipped weights: on a GPU machine (bin/train-gpu), or on the CPU
train-gpu: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bin/train-gpu

# (make synth first: shards in $(SYNTH))
train-cpu: install
	@test -f $(SYNTH)/index.json || { echo "no shards in $(SYNTH): run make synth first" >&2; exit 1; }
	$(BIN)/xdxd-train --data $(SYNTH) --output weights --steps 2000 --threads 1 --workers 1
