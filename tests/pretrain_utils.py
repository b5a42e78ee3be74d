"""Helpers for the pretraining tests: a tiny run config, in-process and launched runs, and a recording Hub."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TINY_RUN = """\
run_name: test
model_config: tiny
tokenizer: {repo}/data/demo/tokenizer
data_dir: {repo}/data/demo/tokenized
prepare_config: {repo}/configs/data/demo.yaml
mixture: {{slimpajama: 0.7, starcoderdata: 0.3}}
seq_len: 64
micro_batch_size: 4
global_batch_size: 8
num_workers: 0
learning_rate: 3.0e-3
min_lr: 3.0e-4
warmup_steps: 2
max_steps: 8
mixed_precision: "no"
attn_implementation: sdpa
log_every: 1
eval_every: 4
eval_batches: 2
save_every: 4
keep_last: 5
report_to: [none]
seed: 0
"""


def write_config(tmp_path: Path, extra: str = "", name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(TINY_RUN.format(repo=REPO) + extra)
    return path


def load_script(rel: str, prefix: str = "_test_"):
    """A recipe or script (recipes/sft.py, scripts/merge_lora.py ...) as a module, to call its main() in-process."""
    import importlib.util

    path = REPO / rel
    spec = importlib.util.spec_from_file_location(f"{prefix}{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_inprocess(config: Path, *overrides: str, nan_steps: set[int] | None = None,
                  sigterm_after_step: int | None = None) -> dict:
    """recipes/pretrain.py's main() in this process (fast: no interpreter start-up); accelerate's singletons reset.
    ``nan_steps``, ``sigterm_after_step``: the faults of tests/faults/launch.py, wrapped around the recipe's
    ``train_step`` for this call only (from the outside: nothing in the package knows)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    import launch

    sys.path.insert(0, str(REPO / "recipes"))
    import pretrain

    original = pretrain.train_step
    if nan_steps:
        pretrain.train_step = launch.nan_steps(pretrain.train_step, nan_steps)
    if sigterm_after_step:
        pretrain.train_step = launch.sigterm_after_step(pretrain.train_step, sigterm_after_step)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    try:
        return pretrain.main(["--config", str(config), *overrides])
    finally:
        pretrain.train_step = original
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()


def run_cli(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                **(env or {})}
    return subprocess.run(args, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


# the multi-process resume cases (tests/test_pretrain_distributed.py, tests/faults/test_faults_world_size.py): 4 steps,
# checkpoints at 2 and 4; log_every 3, so the step-3 log line's window straddles a resume at step 2
RESUME_RUN = "max_steps: 4\nsave_every: 2\neval_every: 2\nlog_every: 3\nexport_initial: true\n"

ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
FAULT_LAUNCHER = REPO / "tests" / "faults" / "launch.py"  # runs the recipe as is, unless a fault/record is asked for


def accelerate_launch(accelerate_config, *args, processes: int | None = None, env: dict | None = None):
    """``accelerate launch --config_file <accelerate_config> [--num_processes N] <args>``, as a user would type it."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
    if processes:
        cmd += ["--num_processes", str(processes)]
    return run_cli(cmd + [str(a) for a in args], env=env)


def launch_pretrain(accelerate_config, config: Path, out: Path, *extra, processes: int | None = None,
                    env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """recipes/pretrain.py under ``accelerate launch`` (through tests/faults/launch.py, so that ``env`` may ask for
    a fault or a record of the samples read); ``accelerate_config`` a file name in configs/accelerate or a path."""
    path = Path(accelerate_config)
    path = path if path.is_absolute() else ACCELERATE_CONFIGS / path
    # (no JIT build of DeepSpeed's CPU shared-memory op, which training never uses: tests/faults/launch.py)
    proc = accelerate_launch(path, FAULT_LAUNCHER, "recipes/pretrain.py", "--config", config, "--output_dir", out,
                             *extra, processes=processes, env={"TINYLLAMA_TEST_NO_DS_SHM_OP": "1", **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def zero3_init_config(tmp_path: Path) -> Path:
    """configs/accelerate/cpu-deepspeed-zero3.yaml with zero3_init_flag true: the model built partitioned."""
    text = (ACCELERATE_CONFIGS / "cpu-deepspeed-zero3.yaml").read_text()
    assert "zero3_init_flag: false" in text
    path = tmp_path / "cpu-deepspeed-zero3-init.yaml"
    path.write_text(text.replace("zero3_init_flag: false", "zero3_init_flag: true"))
    return path


def cut_at(run_dir: Path, step: int, dest: Path) -> Path:
    """A copy of a finished run as it was right after its checkpoint at ``step``: later checkpoints, the exports and
    the log lines past that step removed (an interruption, without running the run again)."""
    import shutil

    shutil.copytree(run_dir, dest, symlinks=True)
    for ckpt in (dest / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    shutil.rmtree(dest / "export", ignore_errors=True)
    rows = [r for r in metrics(dest) if r["step"] <= step]
    (dest / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def fsdp2_worker(processes: int, out: Path, *args) -> dict:
    """tests/fsdp2_worker.py under torchrun (FSDP2 on CPU, accelerate's FSDP checkpoint functions): the final whole
    weights."""
    import torch

    out.mkdir()
    proc = run_cli([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "tests/fsdp2_worker.py", str(out), *map(str, args)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "final.pt")


TIMING = ("tokens_per_sec", "tokens_per_sec_per_device", "mfu", "mfu_with_teacher", "peak_memory_gb",
          "checkpoint_seconds")


def logged(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing fields (and rows of timings only): what an interrupted run must log exactly
    as an uninterrupted one."""
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(run_dir)]
    return [r for r in rows if set(r) != {"step"}]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "logs" / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


class RecordingHub:
    """A local HTTP endpoint that speaks the part of the Hub API that ``upload_folder`` uses, records every request,
    and can fail the first ``fail_first`` commits (with ``fail_status``: huggingface_hub itself retries 5xx with a
    backoff of up to half a minute, so the tests use an error it does not retry, which leaves the retrying to the
    recipe's uploader), or hang."""

    def __init__(self, fail_first: int = 0, hang: bool = False, fail_status: int = 400):
        self.requests: list[tuple[str, str]] = []
        self.files: dict[str, bytes] = {}
        self.commits: list[str] = []
        self.fail_first, self.hang, self.fail_status = fail_first, hang, fail_status
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                self._reply(404, {"error": "not found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                hub.requests.append(("POST", self.path))
                if hub.hang:
                    threading.Event().wait(30)
                    return
                if self.path.endswith("/api/repos/create"):
                    payload = json.loads(body)
                    repo = "/".join(filter(None, [payload.get("organization"), payload["name"]]))
                    return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if self.path.endswith("/api/validate-yaml"):
                    return self._reply(200, {})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if "/commit/" in self.path:
                    if hub.fail_first > 0:
                        hub.fail_first -= 1
                        return self._reply(hub.fail_status, {"error": "injected failure"})
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] == "header":
                            hub.commits.append(item["value"]["summary"])
                    repo = self.path.split("/api/models/", 1)[-1].split("/commit/", 1)[0]
                    return self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'a' * 40}",
                                             "commitOid": "a" * 40})
                return self._reply(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def make_teacher(folder: Path, vocab_size: int | None = None, swap_tokens: tuple[str, str] | None = None,
                 sharpness: float = 30.0, seed: int = 1) -> Path:
    """A teacher model folder for the distillation tests, in a second: the tiny model with random weights, its lm_head
    scaled by ``sharpness`` so that its next-token distributions are peaked (a KL to them is far from 0, as a trained
    teacher's would be), and the demo tokenizer. ``vocab_size``: another vocabulary size; ``swap_tokens``: the
    tokenizer with two tokens' ids exchanged (the same size, another vocabulary)."""
    import shutil

    import torch

    from tinyllama.model import load_model_config

    config = load_model_config("tiny")
    if vocab_size:
        config.vocab_size = vocab_size
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    model.save_pretrained(folder)
    tokenizer = REPO / "data" / "demo" / "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tokenizer / name, folder / name)
    if swap_tokens:
        spec = json.loads((folder / "tokenizer.json").read_text())
        vocab = spec["model"]["vocab"]
        a, b = swap_tokens
        vocab[a], vocab[b] = vocab[b], vocab[a]
        (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder
