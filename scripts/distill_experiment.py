"""Does the teacher help? The CPU experiment of docs/distillation.md: a student trained with a teacher against the same
student, same steps, data and seed, without it; the held-out cross-entropy of both, per seed.

    python scripts/distill_experiment.py [--seeds 0 1 2] [--out outputs/distill-experiment]

The teacher is the demo model (configs/model/demo.json, 1.8M parameters) trained for ``--teacher-steps`` on the demo
corpus; the student the smallest TinyLlama-shaped model (configs/model/tiny.json, 0.6M parameters), trained for
``--student-steps`` from scratch, once plain and once with ``teacher:`` (the recipe's own loss: alpha, temperature,
top-k below). Both runs of a seed read the same samples in the same order (the data order is a function of the seed)
and start from the same weights (a function of the seed too); the only difference is the teacher. Held-out CE: the
recipe's ``val_loss`` at the last step (the same ``eval_batches`` held-out micro-batches in every run). The teacher
is trained once (seed 0) and reused; a second call reuses every finished run in ``--out``.

Prints one table: seed, plain CE, distilled CE, the difference (plain - distilled: positive = the teacher helped),
then the mean and spread of the difference. tests/test_distill.py runs one seed of the same function.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "configs" / "pretrain" / "demo.yaml"

# shared by the teacher and the students: the demo recipe at 64-token samples, 16 x 64 = 1,024 tokens per step
COMMON = {"seq_len": 64, "micro_batch_size": 16, "global_batch_size": 16, "warmup_steps": 10, "eval_batches": 8,
          "report_to": "[none]", "export": "false", "keep_last": 1}
TEACHER = {"model_config": "demo", "max_steps": 400, "seed": 0}
STUDENT = {"model_config": "tiny", "max_steps": 120}
# alpha 0.9: the teacher's distribution carries what the data's one-hot targets carry and more (its held-out CE is
# 1.6 nats below what the student reaches alone), so most of the weight goes to it; T = 1: T = 2 helped less in a
# first sweep (docs/benchmarks.md)
DISTILL = {"distill_alpha": 0.9, "distill_temperature": 1.0}


def _argv(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in (f"--{k}", str(v))]


def run_recipe(out: Path, settings: dict) -> float:
    """recipes/pretrain.py in this process (fresh accelerate state), unless ``out`` already finished: the final
    val_loss."""
    summary = out / "summary.json"
    if not (summary.is_file() and json.loads(summary.read_text())["step"] == int(settings["max_steps"])):
        import importlib.util

        from accelerate.state import AcceleratorState, GradientState, PartialState

        spec = importlib.util.spec_from_file_location("_distill_pretrain", REPO / "recipes" / "pretrain.py")
        recipe = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(recipe)
        resets = (lambda: AcceleratorState._reset_state(True), GradientState._reset_state, PartialState._reset_state)
        for reset in resets:
            reset()
        try:
            recipe.main(["--config", str(BASE), "--output_dir", str(out), *_argv(settings)])
        finally:
            for reset in resets:
                reset()
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r][-1]


def train_teacher(out: Path, teacher_steps: int | None = None) -> tuple[Path, float]:
    """The teacher's model folder and its own held-out CE."""
    settings = {**COMMON, **TEACHER, "eval_every": teacher_steps or TEACHER["max_steps"],
                "save_every": teacher_steps or TEACHER["max_steps"]}
    if teacher_steps:
        settings["max_steps"] = teacher_steps
    return out / "teacher" / "export" / "final", run_recipe(out / "teacher", settings)


def one_seed(out: Path, teacher: Path, seed: int, student_steps: int | None = None, **distill) -> dict:
    """(plain CE, distilled CE) of the student for ``seed``; ``distill``: distill_* settings other than DISTILL's."""
    steps = student_steps or STUDENT["max_steps"]
    settings = {**COMMON, **STUDENT, "max_steps": steps, "eval_every": steps, "save_every": steps, "seed": seed}
    plain = run_recipe(out / f"student-plain-{steps}-{seed}", settings)
    distill = {**DISTILL, **{k: v for k, v in distill.items() if v is not None}}
    name = "-".join(f"{v}" for v in distill.values())
    distilled = run_recipe(out / f"student-distilled-{steps}-{name}-{seed}",
                           {**settings, **distill, "teacher": str(teacher)})
    return {"seed": seed, "plain": plain, "distilled": distilled, "difference": plain - distilled}


def table(rows: list[dict], teacher_ce: float | None = None) -> str:
    lines = ["| seed | held-out CE, plain | held-out CE, with the teacher | difference (plain - distilled) |",
             "|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['plain']:.4f} | {r['distilled']:.4f} | {r['difference']:+.4f} |" for r in rows]
    diffs = [r["difference"] for r in rows]
    summary = f"difference: mean {statistics.mean(diffs):+.4f}, min {min(diffs):+.4f}, max {max(diffs):+.4f}"
    if len(diffs) > 1:
        summary += f", standard deviation {statistics.stdev(diffs):.4f}"
    if teacher_ce is not None:
        summary += f"; the teacher's own held-out CE {teacher_ce:.4f}"
    return "\n".join(lines) + "\n\n" + summary


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(REPO / "outputs" / "distill-experiment"))
    p.add_argument("--teacher-steps", type=int, default=TEACHER["max_steps"])
    p.add_argument("--student-steps", type=int, default=STUDENT["max_steps"])
    p.add_argument("--alpha", type=float, default=DISTILL["distill_alpha"])
    p.add_argument("--temperature", type=float, default=DISTILL["distill_temperature"])
    p.add_argument("--top-k", type=int, default=None)
    a = p.parse_args(argv)
    out = Path(a.out)
    teacher, teacher_ce = train_teacher(out, a.teacher_steps)
    rows = [one_seed(out, teacher, s, a.student_steps, distill_alpha=a.alpha, distill_temperature=a.temperature,
                     distill_top_k=a.top_k) for s in a.seeds]
    print(table(rows, teacher_ce), flush=True)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
