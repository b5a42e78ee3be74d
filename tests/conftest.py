"""Every test runs offline, on CPU, on tiny models and the embedded demo data."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
os.environ.setdefault("WANDB_DISABLED", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs one pytest-xdist worker per core: each worker, and every process it launches (recipes,
    # scripts, accelerate ranks: they inherit the environment), computes on one thread. With torch's default of a
    # thread per core, the two workers' OpenMP threads fight for the two cores and spin while they wait: the same
    # 100-step pretraining took 48 CPU-seconds in the suite and 18 on one thread, with bitwise-equal losses. (A
    # plain single-process `pytest` keeps torch's default.) OMP_NUM_THREADS=N overrides it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # (in case torch was imported before this file)

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    # llama.cpp checks: `make test-gguf` builds llama-cpp-python and sets TINYLLAMA_REQUIRE_LLAMA_CPP=1, so there a
    # missing llama_cpp fails the tests; elsewhere (a plain pytest run) they are skipped with the reason.
    import importlib.util

    if not os.environ.get("TINYLLAMA_REQUIRE_LLAMA_CPP") and importlib.util.find_spec("llama_cpp") is None:
        no_llama = pytest.mark.skip(reason="needs llama-cpp-python: run `make test-gguf`")
        for item in items:
            if item.get_closest_marker("llama_cpp"):
                item.add_marker(no_llama)
    # litgpt checks: `make test-interop` builds litgpt's side environment and sets TINYLLAMA_LITGPT_PYTHON (and
    # TINYLLAMA_REQUIRE_LITGPT=1); elsewhere they are skipped with the reason.
    if not os.environ.get("TINYLLAMA_REQUIRE_LITGPT") and not os.environ.get("TINYLLAMA_LITGPT_PYTHON"):
        no_litgpt = pytest.mark.skip(reason="needs litgpt's side environment: run `make test-interop`")
        for item in items:
            if item.get_closest_marker("litgpt"):
                item.add_marker(no_litgpt)
    if not os.environ.get("TINYLLAMA_GPU_WHEELS"):  # a fetched wheel set (make test-gpu-wheels: tests/test_gpu_wheels.py)
        no_wheels = pytest.mark.skip(reason="needs the GPU tier's wheel set for this Python: run `make test-gpu-wheels`")
        for item in items:
            if item.get_closest_marker("gpu_wheels"):
                item.add_marker(no_wheels)
    if torch.cuda.is_available() or os.environ.get("TINYLLAMA_GPU_TIER_ON_CPU") == "1":  # (tests/gpu/conftest.py)
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):  # (not item.keywords: a folder named gpu is a keyword too)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_paths():
    """The embedded demo corpus and tokenizer, built once per session into the repo's data/demo (a cache:
    the build is deterministic, and recipes' demo configs read the same folder)."""
    from filelock import FileLock

    from tinyllama.demo_corpus import build_demo

    (REPO / "data").mkdir(exist_ok=True)
    with FileLock(str(REPO / "data" / ".demo.lock")):  # parallel workers (make test: pytest -n 2) build it once
        return build_demo()


@pytest.fixture(scope="session", autouse=bool(os.environ.get("PYTEST_XDIST_WORKER")))
def demo_tokenized(demo_paths):
    """With parallel workers, data/demo/tokenized (which the tiny run configs prepare on first use) is prepared
    once, under the lock, before any test: two recipes must not prepare the same folder at the same time. A
    second preparation of a complete folder only reads its manifests."""
    from filelock import FileLock

    from tinyllama.data import prepare_from_config

    cwd = os.getcwd()
    with FileLock(str(REPO / "data" / ".demo.lock")):
        os.chdir(REPO)  # the config's paths are relative to the repository
        try:
            return prepare_from_config(["--config", "configs/data/demo.yaml"])
        finally:
            os.chdir(cwd)


@pytest.fixture(scope="session")
def demo_tokenizer(demo_paths):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_paths["tokenizer"]))


@pytest.fixture(scope="session")
def resume_one_process(tmp_path_factory, demo_paths):
    """pretrain_utils.RESUME_RUN in one process (micro batch 4, 2 accumulation steps: 8 samples per step), in-process:
    the reference of the multi-process resume tests."""
    from pretrain_utils import RESUME_RUN, run_inprocess, write_config

    tmp = tmp_path_factory.mktemp("resume_one_process")
    run_inprocess(write_config(tmp, RESUME_RUN), "--output_dir", str(tmp / "run"))
    return tmp / "run"


@pytest.fixture(scope="session")
def resume_two_processes(tmp_path_factory, demo_paths):
    """engine (ddp, zero2, zero3-init) -> (accelerate config, run config, RESUME_RUN run uninterrupted on 2 processes
    launched with accelerate launch, its log); each engine's run is made once."""
    from pretrain_utils import RESUME_RUN, launch_pretrain, write_config, zero3_init_config

    runs = {}

    def get(engine: str):
        if engine not in runs:
            tmp = tmp_path_factory.mktemp(f"resume_two_processes_{engine}")
            accelerate_config = {"ddp": "cpu.yaml", "zero2": "cpu-deepspeed-zero2.yaml",
                                 "zero3-init": None}[engine] or zero3_init_config(tmp)
            cfg = write_config(tmp, RESUME_RUN)
            proc = launch_pretrain(accelerate_config, cfg, tmp / "full")
            runs[engine] = accelerate_config, cfg, tmp / "full", proc.stderr
        return runs[engine]

    return get
