"""Python imports this at start-up when tests/faults/site is on PYTHONPATH: the faults of tests/faults/launch.py
named in the environment are installed in this process too (how a fault reaches the recipes a pipeline starts)."""

import os
import sys

if any(os.environ.get(k) for k in ("TINYLLAMA_TEST_FAULT", "TINYLLAMA_TEST_RECORD_SAMPLES", "TINYLLAMA_TEST_NAN_STEPS",
                                   "TINYLLAMA_TEST_SIGTERM_AFTER_STEP")):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import launch

    launch.install_from_env()
