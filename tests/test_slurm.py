"""scripts/slurm/pretrain.sbatch under stand-in srun, scontrol and accelerate: Slurm's pre-timeout USR1 reaches the
batch shell only; the script must forward it to every trainer process on every node (from a step that asks for no
GPU and one CPU, so the training step cannot block it, and that does not signal itself), the launchers between
them must survive it (USR1's default action would kill a launcher and, with it, its trainers), the job must requeue
itself once the checkpoint is saved, and the trainer's arguments must arrive intact."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NODES, WORKERS = 2, 2

SRUN = """\
import json, os, signal, subprocess, sys, time
args = sys.argv[1:]
options = []
while args and args[0].startswith("--"):  # srun's own options
    options.append(args.pop(0))
with open(os.path.join(os.environ["OUT"], "srun-calls.jsonl"), "a") as f:
    f.write(json.dumps({"options": options, "command": args}) + "\\n")
if "--overlap" in sys.argv:  # a command run on each node, beside the job step (all nodes are this machine)
    # (a signal that reaches this srun client would be forwarded to its tasks: it must not be signalled itself)
    signal.signal(signal.SIGUSR1, lambda *a: open(os.path.join(os.environ["OUT"], "srun-signalled"), "w").close())
    code = subprocess.call(args)
    time.sleep(0.5)  # (a signal sent to this process has landed by now)
    sys.exit(code)
procs = [subprocess.Popen(args, env={**os.environ, "SLURM_NODEID": str(n)}) for n in range(int(os.environ["SLURM_NNODES"]))]
sys.exit(max(p.wait() for p in procs))
"""
SCONTROL = """\
import os, sys
if sys.argv[1:3] == ["show", "hostnames"]:
    print("\\n".join(f"node{n}" for n in range(2)))
elif sys.argv[1] == "requeue":
    open(os.path.join(os.environ["OUT"], "requeued"), "w").write(" ".join(sys.argv[2:]))
else:
    sys.exit(f"stand-in scontrol: unexpected {sys.argv[1:]}")
"""
ACCELERATE = """\
import os, subprocess, sys
args = sys.argv[1:]
script = next(i for i, a in enumerate(args) if a.endswith("recipes/pretrain.py"))
node = os.environ["SLURM_NODEID"]
# as torch.distributed.run starts workers: `python -u recipes/pretrain.py ...`, run from a folder whose
# recipes/pretrain.py is the stand-in trainer (same command line, nothing heavy)
procs = [subprocess.Popen([sys.executable, "-u", *args[script:]], cwd=os.environ["STANDIN_ROOT"],
                          env={**os.environ, "RANK": f"{node}-{r}"}) for r in range(int(os.environ["WORKERS"]))]
codes = [p.wait() for p in procs]
open(os.path.join(os.environ["OUT"], f"launcher-{node}"), "w").write(" ".join(map(str, codes)))
sys.exit(max(codes))
"""
TRAINER = """\
import json, os, signal, sys, time
from pathlib import Path
out, rank = Path(os.environ["OUT"]), os.environ["RANK"]
stop = []
for sig in (signal.SIGTERM, signal.SIGUSR1):  # as recipes/pretrain.py's StopRequested
    signal.signal(sig, lambda signum, frame: stop.append(signum))
(out / f"ready-{rank}").write_text(json.dumps(sys.argv[1:]))
deadline = time.time() + 60
while not stop and time.time() < deadline:
    time.sleep(0.05)
(out / f"{'stopped' if stop else 'timeout'}-{rank}").write_text(str(stop))
"""


def write_bin(folder: Path) -> None:
    folder.mkdir()
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL), ("accelerate", ACCELERATE)):
        path = folder / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(0o755)


def test_preemption_signal_reaches_every_trainer_and_the_launchers_survive(tmp_path):
    write_bin(tmp_path / "bin")
    (tmp_path / "standin" / "recipes").mkdir(parents=True)
    (tmp_path / "standin" / "recipes" / "pretrain.py").write_text(TRAINER)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node[0-1]",
           "SLURM_NNODES": str(NODES), "GPUS_PER_NODE": str(WORKERS), "WORKERS": str(WORKERS), "OUT": str(out),
           "STANDIN_ROOT": str(tmp_path / "standin"), "SLURM_JOB_ID": "4242"}
    extra = ["--max_steps", "9", "--mixture", '{"slimpajama": 0.5, "starcoderdata": 0.5}', "--run_name", "a b"]
    job = subprocess.Popen(["bash", "scripts/slurm/pretrain.sbatch", "configs/pretrain/demo.yaml", *extra],
                           cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    ranks = [f"{n}-{r}" for n in range(NODES) for r in range(WORKERS)]
    try:
        deadline = time.time() + 60
        while not all((out / f"ready-{r}").exists() for r in ranks) and time.time() < deadline:
            time.sleep(0.1)
        assert all((out / f"ready-{r}").exists() for r in ranks), sorted(p.name for p in out.iterdir())
        # every argument intact (JSON, spaces), after --resume auto (a requeued job continues its run)
        assert json.loads((out / "ready-0-0").read_text()) == [
            "--config", "configs/pretrain/demo.yaml", "--resume", "auto", *extra]
        job.send_signal(signal.SIGUSR1)  # what Slurm does 300 s before the time limit (--signal=B:USR1@300)
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
        subprocess.run(["pkill", "-f", "--", "-u [r]ecipes/pretrain.py --config configs/pretrain/demo.yaml"])
    assert sorted(p.name for p in out.glob("stopped-*")) == [f"stopped-{r}" for r in ranks], err
    assert all((out / f"stopped-{r}").read_text() == f"[{int(signal.SIGUSR1)}]" for r in ranks)
    assert [(out / f"launcher-{n}").read_text() for n in range(NODES)] == ["0 0"] * NODES  # launchers survived
    assert job.returncode == 0 and "USR1: asking every trainer to save a checkpoint and exit" in err
    # the forwarding step asks for no GPU and one CPU (never queued behind the training step), and was not signalled
    calls = [json.loads(line) for line in (out / "srun-calls.jsonl").read_text().splitlines()]
    overlap = [c["options"] for c in calls if "--overlap" in c["options"]]
    assert len(overlap) == 1 and {"--gres=none", "--cpus-per-task=1"} <= set(overlap[0])
    assert not (out / "srun-signalled").exists()
    # the checkpoint saved, the job went back to the queue (--requeue in its header): it resumes with --resume auto
    assert (out / "requeued").read_text() == "4242"
    assert "#SBATCH --requeue" in (REPO / "scripts" / "slurm" / "pretrain.sbatch").read_text()
