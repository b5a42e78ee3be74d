"""scripts/pipeline.py end to end on the demo stage configs (shrunk, tiny model), as a user runs it: a preempted
first stage, a second run that resumes it and chains the rest (each stage from the previous one's export/final,
its learning-rate schedule continued with lr_step_offset: continue), a third run that skips everything, and a
changed config or changed input that stops the pipeline with a message."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from pretrain_utils import REPO, metrics, run_cli
from tinyllama.config import ConfigError, parse_config
from tinyllama.pipeline import load_pipeline
from tinyllama.training.args import PretrainArgs, continued_lr_step
from tinyllama.training.schedule import LRSchedule

PIPELINE = """\
name: test-chain
variant: math_code
variants: [math_code, general]
launcher: [python]
stages:
  - name: basic
    config: configs/pretrain/demo-stage1-basic.yaml
    overrides: {{model_config: tiny, max_steps: 4, lr_schedule_steps: 10, save_every: 2}}
  - name: continual-{{variant}}
    config: configs/continual/demo-{{variant}}.yaml
    init_from: basic
    overrides: {{max_steps: 4, lr_schedule_steps: 10, save_every: 2{extra}}}
  - name: cooldown-{{variant}}
    config: configs/cooldown/demo-{{variant}}.yaml
    init_from: continual-{{variant}}
    overrides: {{max_steps: 2, lr_schedule_steps: 10, save_every: 2}}
  - name: eval-{{variant}}
    recipe: eval
    suite: commonsense
    init_from: previous
    optional: eval
"""


def pipeline(tmp_path, root, *args, extra="", env=None):
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(extra=extra))
    return run_cli([sys.executable, "scripts/pipeline.py", "--pipeline", str(path), "--output-root", str(root),
                    *args], env=env)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_chain_resumes_chains_skips_and_refuses_changes(tmp_path, demo_paths):
    root = tmp_path / "out"
    # 1. stage 1 is preempted after step 2: the pipeline stops and says how to continue
    # (tests/faults/site: the fault reaches the recipe process the pipeline starts; nothing in the package knows)
    r = pipeline(tmp_path, root, env={"TINYLLAMA_TEST_SIGTERM_AFTER_STEP": "2",
                                      "PYTHONPATH": str(REPO / "tests" / "faults" / "site")})
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "stage basic stopped at step 2 of 4" in r.stderr and "run the pipeline again" in r.stderr
    assert not (root / "continual-math_code").exists()

    # 2. run again: stage 1 resumes from its checkpoint, the others run, each from the previous export
    r = pipeline(tmp_path, root, "--with-eval")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumes from its checkpoint at step 2" in r.stdout
    doc = json.loads((root / "pipeline-math_code.json").read_text())
    rows = {row["stage"]: row for row in doc["stages"]}
    assert rows["basic"]["status"].startswith("resumed") and rows["cooldown-math_code"]["status"].startswith("ran")
    assert rows["eval-math_code"]["status"] == "not run (note)" and "offline" in rows["eval-math_code"]["note"]
    assert [rows[s]["tokens"] for s in ("basic", "continual-math_code", "cooldown-math_code")] == [
        4 * 32 * 64, 4 * 32 * 64, 2 * 128 * 64]  # the cooldown's 4x batch counted right
    assert rows["cooldown-math_code"]["cumulative_tokens"] == doc["total_tokens"] == (8 * 32 + 2 * 128) * 64
    assert all(isinstance(rows[s]["final_loss"], float) for s in ("basic", "continual-math_code"))
    cool = [m for m in metrics(root / "cooldown-math_code") if "lr" in m]
    assert [m["global_batch"] for m in cool] == [128, 128] and [m["tokens_seen"] for m in cool] == [8192, 16384]
    for prev, nxt in [("basic", "continual-math_code"), ("continual-math_code", "cooldown-math_code")]:
        assert same(weights(root / prev / "export" / "final"), weights(root / nxt / "export" / "initial"))
        saved = yaml.safe_load((root / nxt / "config.yaml").read_text())
        assert saved["init_from"] == str(root / prev / "export" / "final") and saved["resume"] == "auto"
    # lr_step_offset: continue (the demo continual and cooldown configs): each stage's offset is the steps before it,
    # derived by the plan and equal to what the recipe reads from the previous export; one cosine over the chain
    chain = ("basic", "continual-math_code", "cooldown-math_code")
    assert [yaml.safe_load((root / s / "config.yaml").read_text())["lr_step_offset"] for s in chain] == [0, 4, 8]
    assert [continued_lr_step(str(root / s / "export" / "final")) for s in chain] == [4, 8, 10]
    whole = LRSchedule.from_args(parse_config(PretrainArgs, ["--config", str(root / "basic" / "config.yaml")])[0])
    lrs = [m["lr"] for s in chain for m in metrics(root / s) if "lr" in m]
    assert lrs == pytest.approx([whole(step) for step in range(10)], abs=1e-6)
    table = (root / "pipeline-math_code.md").read_text()
    assert "| cooldown-math_code |" in table and "pipeline-math_code.png" in table
    assert (root / "pipeline-math_code.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stage" in r.stdout and "cumulative" in r.stdout and "final loss" in r.stdout

    # 3. a third run skips every finished stage and trains nothing
    r = pipeline(tmp_path, root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "===" not in r.stdout and r.stdout.count("skipped (done)") == 3
    assert len([m for m in metrics(root / "basic") if "lr" in m]) == 4  # no new training rows

    # 4. a changed stage config is never silently reused: nothing runs, the message names stage, key and the fix
    r = pipeline(tmp_path, root, extra=", learning_rate: 1.0e-3")
    assert r.returncode == 2
    assert "continual-math_code" in r.stderr and "learning_rate: 0.003 -> 0.001" in r.stderr
    assert "--rerun continual-math_code" in r.stderr and "Nothing was run" in r.stderr
    r = pipeline(tmp_path, root, "--dry-run", "--rerun", "continual-math_code", extra=", learning_rate: 1.0e-3")
    assert r.returncode == 0 and "basic" in r.stdout
    assert r.stdout.count("runs again") == 2  # continual and cooldown; basic stays done

    # 5. new weights upstream make the later stages stale
    final = root / "basic" / "export" / "final" / "model.safetensors"
    sd = load_file(str(final))
    save_file({k: v + 1 for k, v in sd.items()}, str(final), metadata={"format": "pt"})
    r = pipeline(tmp_path, root, "--dry-run")
    assert r.returncode == 2 and "continual-math_code" in r.stderr and "changed since it ran" in r.stderr


def test_bad_pipeline_files_name_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        name: x
        variants: [a]
        stages:
          - name: one
            config: configs/continual/nope-{variant}.yaml
            init_from: two
            colour: red
          - name: two
            recipe: bake
            config: configs/pretrain/demo.yaml
          - name: three
            recipe: sft
            config: configs/chat/sft-demo.yaml
        """))
    with pytest.raises(ConfigError) as info:
        load_pipeline(bad)
    msg = str(info.value)
    for fragment in ["unknown key 'colour'", "'recipe' must be one of", "config file not found: "
                     "configs/continual/nope-a.yaml", "init_from 'two' is not an earlier stage",
                     "a sft stage needs init_from"]:
        assert fragment in msg, fragment
    # types are checked by the parser every config goes through, with the closest key for a typo
    bad.write_text("variants: 3\nstages:\n  - {name: one, config: configs/pretrain/demo.yaml, limit: lots, "
                   "init_frm: x}\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(bad)
    msg = str(info.value)
    assert "'variants' (pipeline file): expected a list" in msg and "'limit' in stages[0] (one): expected float" in msg
    assert "unknown key 'init_frm' in stages[0] (one); did you mean 'init_from'?" in msg


def test_operational_keys_are_pretraining_fields():
    """The keys whose change does not make a finished stage stale are named beside the fields they name."""
    import dataclasses

    from tinyllama.pipeline import OPERATIONAL_KEYS
    from tinyllama.training.args import PretrainArgs

    fields = {f.name for f in dataclasses.fields(PretrainArgs)}
    assert OPERATIONAL_KEYS <= fields and {"learning_rate", "mixture", "seed"} & OPERATIONAL_KEYS == set()


def test_dry_run_of_the_shipped_demo_and_unknown_variant(tmp_path):
    r = run_cli([sys.executable, "scripts/pipeline.py", "--dry-run", "--output-root", str(tmp_path),
                 "--variant", "code"])
    assert r.returncode == 0, r.stderr
    assert "continual-code" in r.stdout and "cooldown" not in r.stdout and "--with-chat" in r.stdout
    r = run_cli([sys.executable, "scripts/pipeline.py", "--dry-run", "--variant", "klingon"])
    assert r.returncode == 2 and "variant 'klingon'" in r.stderr
    # the command's help lists its options
    out = subprocess.run([sys.executable, "scripts/pipeline.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert "--rerun" in out.stdout and "--with-eval" in out.stdout
