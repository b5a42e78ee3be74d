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

.PHONY: install lint demo test test-fast test-bench test-gguf test-interop test-gpu test-gpu-wheels faults clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

# the linter, configured in pyproject.toml ([tool.ruff]); .ci/run calls it before the tests
lint: install
	$(VENV)/bin/ruff check tinyllama recipes scripts evaluation tests

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

# the GPU tier (tests/gpu, docs/testing.md) on a CUDA machine, bare and offline included: scripts/gpu/tier.sh installs
# the wheel set carried in .whl/ (scripts/gpu/wheels.py fetch, on a machine with PyPI) into an empty folder, runs
# pytest -m gpu tests/gpu and the 1.1B pretraining benchmark, log and tables in $OUT. PYTHON: the machine's python3.
# TINYLLAMA_GPU_TIER_ON_CPU=1 pytest -m gpu tests/gpu runs the tier's tests on CPU (tiny sizes).
test-gpu:
	PYTHON=$(PYTHON) bash scripts/gpu/tier.sh

# the wheel set for this machine's Python (fetched once into ~/.cache, with PyPI) installs into an empty folder and
# the tier collects with it (tests/test_gpu_wheels.py)
GPU_WHEELS ?= $(HOME)/.cache/tinyllama-gpu-wheels/set-py$(shell $(PY) -c "import sys; print('%d.%d' % sys.version_info[:2])")
test-gpu-wheels: install
	test -f $(GPU_WHEELS)/MANIFEST.txt || $(PY) scripts/gpu/wheels.py fetch --python \
	  $$($(PY) -c "import sys; print('%d.%d' % sys.version_info[:2])") --dest $(GPU_WHEELS)
	TINYLLAMA_GPU_WHEELS=$(GPU_WHEELS) $(PY) -m pytest -q -m gpu_wheels tests/test_gpu_wheels.py

clean:
	rm -rf data/demo outputs/demo*
