"""Bad inputs: each case names the command, how to set the mistake up, the message fragment and the exit status.

Every case must: print ``error: <fragment>`` (no traceback), exit non-zero, fail before expensive work (no
checkpoint, shard or adapter written anywhere), and leave an existing run folder byte-identical (hashed before and
after). The commands run in process (the entry points are the same functions ``python script`` calls); a few run as
real processes to prove the exit status end to end.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from fault_utils import CHAIN_RUN, REPO, launch, record, tree_hashes
from pretrain_utils import load_script, write_config

TOKEN_FREE = "hf_" + "x" * 10


@pytest.fixture(scope="module")
def world(tmp_path_factory, reference):
    """An existing, finished run (outputs that must survive every mistake) and the fixtures the cases point at."""
    from chat_helpers import fixed_answer_rows
    from tinyllama.chat.demo_data import build_base_model, write_hub_layout

    tmp = tmp_path_factory.mktemp("bad-inputs")
    run = tmp / "existing-run"
    shutil.copytree(reference.parents[2], run, symlinks=True)
    export = run / "export" / "final"
    ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
    w = {"tmp": tmp, "run": run, "export": export, "ckpt": ckpt}
    # a model folder with a corrupted safetensors file
    bad = tmp / "corrupt-export"
    shutil.copytree(export.resolve(), bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    w["corrupt"] = bad
    # a model folder holding only pickled weights
    pkl = tmp / "pickle-export"
    shutil.copytree(export.resolve(), pkl)
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(pkl / "model.safetensors")), pkl / "pytorch_model.bin")
    (pkl / "model.safetensors").unlink()
    w["pickle"] = pkl
    # model configs that do not match the demo data / the checkpoint
    cfg = json.loads((REPO / "configs" / "model" / "tiny.json").read_text())
    (tmp / "small-vocab.json").write_text(json.dumps({**cfg, "vocab_size": 64}))
    (tmp / "wider.json").write_text(json.dumps({**cfg, "hidden_size": cfg["hidden_size"] * 2}))
    # chat fixtures
    base = build_base_model(tmp / "base", model_config="tiny")
    rows = fixed_answer_rows(8)
    w["base"], w["chat_data"] = base, write_hub_layout(tmp / "chat", {"train_sft": rows, "test_sft": rows})
    no_roles = [{"messages": [{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 4
    w["chat_bad_roles"] = write_hub_layout(tmp / "chat-roles", {"train_sft": no_roles, "test_sft": no_roles})
    w["chat_no_messages"] = write_hub_layout(tmp / "chat-cols", {"train_sft": [{"text": "hi"}] * 4,
                                                                  "test_sft": [{"text": "hi"}] * 4})
    (tmp / "adapter").mkdir()
    (tmp / "adapter" / "adapter_config.json").write_text("{}")
    w["adapter"] = tmp / "adapter"
    (tmp / "not-adapter").mkdir()
    w["not_adapter"] = tmp / "not-adapter"
    # raw data files
    raw = tmp / "raw"
    raw.mkdir()
    (raw / "empty.jsonl").write_text("")
    (raw / "bad-utf8.jsonl").write_bytes(b'{"text": "caf\xe9"}\n' * 3)
    (raw / "no-field.jsonl").write_text('{"content": "hello"}\n' * 3)
    (raw / "not-json.jsonl").write_text("this is not json\n" * 3)
    (raw / "ok.jsonl").write_text('{"text": "hello world"}\n' * 3)
    (raw / "gigantic.jsonl").write_text(json.dumps({"text": "word " * 2_000_000}) + "\n")
    w["raw"] = raw
    (tmp / "broken.yaml").write_text("learning_rate: [1e-3\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "suite-missing-task.yaml").write_text("tasks:\n  - task: no_such_task_anywhere\n")
    return w


def pretrain(w, *extra, config_extra: str = ""):
    cfg = write_config(w["tmp"], CHAIN_RUN + config_extra, name="bad-run.yaml")
    return ["pretrain", "--config", str(cfg), "--output_dir", str(w["run"]), *extra]


def prep(w, source_path, *extra, text_field="text", config_extra=""):
    cfg = w["tmp"] / "bad-prep.yaml"
    cfg.write_text(f"tokenizer: {REPO}/data/demo/tokenizer\noutput_dir: {w['tmp']}/prep-out\n"
                   f"sources:\n  src:\n    path: {source_path}\n    text_field: {text_field}\n{config_extra}")
    return ["prepare", "--config", str(cfg), *extra]


def sft(w, *extra, model=None, data=None):
    return ["sft", "--model_name_or_path", str(model or w["base"]), "--dataset_name", str(data or w["chat_data"]),
            "--output_dir", str(w["run"] / "sft"), "--use_peft", "true", "--max_steps", "2", "--report_to", "none",
            "--bf16", "false", *extra]


# (id, argv builder, expected fragment, exit status)
CASES = [
    # pretraining config: keys, types, values
    ("pt-unknown-key", lambda w: pretrain(w, "--learning_rat", "0.1"), "learning_rat", 2),
    ("pt-type-int", lambda w: pretrain(w, "--max_steps", "ten"), "max_steps", 2),
    ("pt-cli-value-named-as-such", lambda w: pretrain(w, "--max_steps", "ten"),
     "invalid configuration (command line)", 2),  # was headed with the YAML file's name
    ("pt-type-bool", lambda w: pretrain(w, "--export", "maybe"), "export", 2),
    ("pt-negative-steps", lambda w: pretrain(w, "--max_steps", "-1"), "max_steps", 2),
    ("pt-batch-not-divisible", lambda w: pretrain(w, "--global_batch_size", "6"),
     "global batch 6 (from step 0) is not divisible by micro_batch_size 4", 2),
    ("pt-bad-choice", lambda w: pretrain(w, "--lr_schedule", "zigzag"), "lr_schedule", 2),
    ("pt-yaml-unknown-key", lambda w: pretrain(w, config_extra="warmup: 3\n"), "warmup", 2),
    ("pt-push-without-id", lambda w: pretrain(w, "--push_to_hub", "true"), "'push_to_hub' needs 'hub_model_id'", 2),
    # paths
    ("pt-config-missing", lambda w: ["pretrain", "--config", str(w["tmp"] / "nope.yaml")], "config file not found",
     2),
    ("pt-config-broken-yaml", lambda w: ["pretrain", "--config", str(w["tmp"] / "broken.yaml")], "not valid YAML", 2),
    ("pt-config-not-mapping", lambda w: ["pretrain", "--config", str(w["tmp"] / "list.yaml")], "YAML mapping", 2),
    ("pt-data-dir-missing", lambda w: pretrain(w, "--data_dir", str(w["tmp"] / "no-data"), "--prepare_config", ""),
     "no-data", 2),
    ("pt-tokenizer-missing", lambda w: pretrain(w, "--tokenizer", str(w["tmp"] / "no-tok")), "no-tok", 2),
    ("pt-model-config-missing", lambda w: pretrain(w, "--model_config", str(w["tmp"] / "no.json")),
     "model config not found", 2),
    ("pt-resume-missing", lambda w: pretrain(w, "--resume", str(w["tmp"] / "no-ckpt")), "'resume'", 2),
    ("pt-resume-not-checkpoint", lambda w: pretrain(w, "--resume", str(w["export"].resolve())),
     "not a complete checkpoint", 2),
    ("pt-init-from-missing", lambda w: pretrain(w, "--init_from", str(w["tmp"] / "no-model")), "no-model", 2),
    ("pt-mixture-unknown-source", lambda w: pretrain(w, "--mixture", "{nosuch: 1.0}"), "nosuch", 2),
    # models that do not fit
    ("pt-vocab-mismatch", lambda w: pretrain(w, "--model_config", str(w["tmp"] / "small-vocab.json")),
     "does not fit the model's vocab_size 64", 2),
    ("pt-checkpoint-other-size", lambda w: pretrain(w, "--model_config", str(w["tmp"] / "wider.json"), "--resume",
                                                    str(w["ckpt"])), "does not match", 2),
    ("pt-corrupt-safetensors", lambda w: pretrain(w, "--init_from", str(w["corrupt"])), "model.safetensors", 2),
    ("pt-pickle-weights-refused", lambda w: pretrain(w, "--init_from", str(w["pickle"])), "safetensors", 2),
    # data preparation: config and rows
    ("prep-unknown-key", lambda w: prep(w, w["raw"] / "ok.jsonl", "--shard_tokenz", "5"), "shard_tokenz", 2),
    ("prep-source-missing", lambda w: prep(w, w["raw"] / "nope.jsonl"), "nope.jsonl", 2),
    ("prep-tokenizer-missing", lambda w: prep(w, w["raw"] / "ok.jsonl", "--tokenizer", str(w["tmp"] / "no-tok")),
     "no-tok", 2),
    ("prep-empty-file", lambda w: prep(w, w["raw"] / "empty.jsonl"), "empty source, no rows in", 2),
    ("prep-invalid-utf8", lambda w: prep(w, w["raw"] / "bad-utf8.jsonl"), "bad-utf8.jsonl", 2),
    ("prep-missing-field", lambda w: prep(w, w["raw"] / "no-field.jsonl"), "row 1 has no field 'text' (text_field)", 2),
    ("prep-not-json", lambda w: prep(w, w["raw"] / "not-json.jsonl"), "not-json.jsonl", 2),
    # chat (SFT, LoRA merge)
    ("sft-unknown-key", lambda w: sft(w, "--lora_rank", "8"), "lora_rank", 2),
    ("sft-negative-lr", lambda w: sft(w, "--learning_rate", "-1e-3"), "'learning_rate' must be positive", 2),
    ("sft-model-missing", lambda w: sft(w, model=w["tmp"] / "no-model"), "model folder not found", 2),
    ("sft-adapter-as-model", lambda w: sft(w, model=w["adapter"]), "is a LoRA adapter", 2),
    ("sft-dataset-missing", lambda w: sft(w, data=w["tmp"] / "no-data"), "local dataset not found", 2),
    ("sft-no-messages-column", lambda w: sft(w, data=w["chat_no_messages"]), "no 'messages' column", 2),
    ("sft-unexpected-roles", lambda w: sft(w, data=w["chat_bad_roles"]), "narrator", 2),
    ("sft-token-in-config", lambda w: sft(w, "--hub_token", TOKEN_FREE), "do not put the Hub token", 2),
    ("sft-resume-none", lambda w: sft(w, "--resume_from_checkpoint", "last"), "no checkpoint-* folder", 2),
    ("merge-adapter-missing", lambda w: ["merge", str(w["tmp"] / "no-adapter"), "--output_dir", str(w["tmp"] / "m")],
     "adapter folder not found", 2),
    ("merge-not-adapter", lambda w: ["merge", str(w["not_adapter"]), "--output_dir", str(w["tmp"] / "m")],
     "not a LoRA adapter folder", 2),
    # evaluation
    ("eval-unknown-suite", lambda w: ["eval", str(w["export"]), "no_such_suite"], "unknown suite", 2),
    ("eval-model-missing", lambda w: ["eval", str(w["tmp"] / "no-model"), "commonsense"], "no-model", 2),
    ("eval-missing-task", lambda w: ["eval", str(w["export"]), str(w["tmp"] / "suite-missing-task.yaml")],
     "no_such_task_anywhere", 2),  # was a gap: lm-eval loaded the model and wrote eval/ before reporting it
]


def run_command(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "pretrain":
            from pretrain_utils import run_inprocess

            run_inprocess(Path(args[1]), *args[2:])
        elif cmd == "prepare":
            from tinyllama.data import prepare_data
            from tinyllama.utils import entry_point

            entry_point(prepare_data)(args)
        elif cmd == "sft":
            load_script("recipes/sft.py").main(args)
        elif cmd == "merge":
            merge = load_script("scripts/merge_lora.py")
            return merge.main(args) or 0
        elif cmd == "eval":
            from tinyllama.evaluation import main

            return main(["run", *args])
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def outputs_of(w) -> dict:
    return {"run": tree_hashes(w["run"]), "prep": tree_hashes(w["tmp"] / "prep-out")}


KNOWN_GAPS = []  # found by this table, not fixed yet: add them as strict xfails, so that a fix turns the suite red


@pytest.mark.parametrize("case", [*[pytest.param(c, id=c[0]) for c in CASES], *KNOWN_GAPS])
def test_bad_input(case, world, capsys):
    name, build, fragment, status = case
    argv = build(world)
    before = outputs_of(world)
    capsys.readouterr()
    t = time.time()
    code = run_command(argv)
    took = time.time() - t
    out = capsys.readouterr()
    assert code == status, (code, out.err[-2000:])
    assert "error: " in out.err, out.err[-2000:]
    message = out.err[out.err.rindex("error: "):]  # the message (it may list several problems, one a line)
    assert fragment in message, message
    assert "Traceback" not in out.err
    assert outputs_of(world) == before  # nothing existing was touched
    assert not list((world["tmp"] / "prep-out").rglob("*.bin")) if (world["tmp"] / "prep-out").exists() else True
    record("bad_input", case=name, fragment=fragment, exit=code, seconds=round(took, 1), message=message[:300])


@pytest.mark.parametrize("script,args,fragment", [
    ("recipes/pretrain.py", ["--max_steps", "ten"], "max_steps"),
    ("scripts/prepare_data.py", ["--config", "/nonexistent/prep.yaml"], "config file not found"),
])
def test_bad_input_exit_status_as_a_process(script, args, fragment):
    proc = launch(script, args)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout
    assert "error: " in proc.stdout and fragment in proc.stdout[proc.stdout.index("error: "):], proc.stdout
