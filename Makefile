# Two commands on a fresh machine with Python 3.11 and a C compiler:
#   make demo   venv, install, then the embedded demo pipeline (CPU, no network; scripts/pipeline.py)
#   make test   venv, install, then the test suite (CPU, no network; two worker processes)
# make test-fast: the inner loop, without the tests marked slow (end-to-end runs, launched processes)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install demo test test-fast faults clean

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

# -n 2: two pytest-xdist workers (most tests wait on a launched process or a tiny model: one core each);
# --dist loadfile keeps a file's tests, and their module fixtures, on one worker.
test: install
	$(PY) -m pytest -q -x -n 2 --dist loadfile --durations=15

test-fast: install
	$(PY) -m pytest -q -x -n 2 --dist loadfile -m "not slow and not faults_full" --durations=10

# the whole fault-injection suite (kills, preemption, disk full, Hub outages, bad inputs; docs/reliability.md)
faults: install
	TINYLLAMA_FAULTS_FULL=1 $(PY) -m pytest -q tests/faults --durations=20

clean:
	rm -rf data/demo outputs/demo*
