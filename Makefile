# Two commands on a fresh machine with Python 3.11 and a C compiler:
#   make demo   venv, install, then the embedded demo pipeline (CPU, no network; scripts/pipeline.py)
#   make test   venv, install, then the test suite (CPU, no network; two worker processes)
#   make test-gguf   llama-cpp-python built from source (cached outside the repo), then the llama.cpp checks
#   make test-interop   litgpt in a side environment (cached outside the repo), then the checkpoint-conversion checks
# make test-fast: the inner loop, without the tests marked slow (end-to-end runs, launched processes)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install demo test test-fast test-bench test-gguf test-interop test-gpu faults clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

# the v1.1 chain on the demo (basic -> continual -> cooldown, then the summary table and plot in outputs/demo-v1.1);
# e.g. make demo DEMO_ARGS='--variant chinese --with-chat'. A second run skips the finished stages.
demo: install
	$(PY) scripts/pipeline.py $(DEMO_ARGS)

# -n 2: two pytest-xdist workers (most tests wait on a launched process or a tiny model: one core each; tests/conftest.py
# gives each worker, and what it launches, one torch thread);
# --dist loadfile keeps a file's tests, and their module fixtures, on one worker.
test: install
	$(PY) -m pytest -q -x -n 2 --dist loadfile --durations=15 -m "not llama_cpp and not litgpt and not bench"

test-fast: install
	$(PY) -m pytest -q -x -n 2 --dist loadfile -m "not slow and not faults_full and not llama_cpp and not litgpt and not bench" --durations=10

# GGUF exports checked by llama.cpp itself (docs/use.md): builds llama-cpp-python once per version and CMAKE_ARGS
# (scripts/llama_cpp.sh; ~10 min on 2 cores, then cached in ~/.cache/tinyllama-wheels), installs it into the venv,
# then runs the tests marked llama_cpp; here a missing llama_cpp fails them instead of skipping.
test-gguf: install
	PY=$(PY) bash scripts/llama_cpp.sh
	TINYLLAMA_REQUIRE_LLAMA_CPP=1 $(PY) -m pytest -q -x --durations=10 -m llama_cpp

# Checkpoint conversion checked by litgpt's own model and converters (tests/test_interop_litgpt.py, docs/use.md):
# litgpt 0.5.13 in a side virtual environment outside the repository (scripts/litgpt_env.sh: requirements-litgpt.txt,
# built once, cached in ~/.cache/tinyllama-litgpt), then the tests marked litgpt; here a missing side environment
# fails them instead of skipping.
test-interop: install
	PYTHON=$(PYTHON) bash scripts/litgpt_env.sh >/dev/null
	TINYLLAMA_LITGPT_PYTHON=$$(PYTHON=$(PYTHON) bash scripts/litgpt_env.sh 2>/dev/null) TINYLLAMA_REQUIRE_LITGPT=1 \
	  $(PY) -m pytest -q -x --durations=10 -m litgpt

# the benchmark scripts at toy size on CPU (tests marked bench: each prints its tables, nothing is timed; the GPU
# benchmark's TOY=1 run is most of it), so they do not rot between GPU sessions; .ci/run calls it
test-bench: install
	$(PY) -m pytest -q -x -n 2 --dist loadfile --durations=10 -m "bench and not llama_cpp"

# the whole fault-injection suite (kills, preemption, disk full, Hub outages, bad inputs; docs/reliability.md)
faults: install
	TINYLLAMA_FAULTS_FULL=1 $(PY) -m pytest -q tests/faults --durations=20

# the GPU tier (tests/gpu, docs/testing.md), on a CUDA machine: flash-attn / Liger / bitsandbytes checks, the 1.1B
# bf16 step, compile, QLoRA, the GPU benchmark at toy size. TINYLLAMA_GPU_TIER_ON_CPU=1 runs it on CPU (tiny sizes).
# No install step (a GPU box is often offline with its own CUDA torch): `make install` first, or PY=python3.
test-gpu:
	-nvidia-smi
	$(PY) -c "import torch, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
	  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device'); \
	  print('transformers', transformers.__version__)"
	$(PY) -m pytest -q -m gpu tests/gpu -rs --durations=10

clean:
	rm -rf data/demo outputs/demo*
