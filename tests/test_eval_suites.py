"""Evaluation suites, reference scores, the runner's checks and its offline task generation (no model runs)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tinyllama import evaluation as ev
from tinyllama.evaluation.runner import lm_eval_env

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "evaluation" / "run_lm_eval.sh"


def test_suites_exist_with_the_published_task_lists():
    assert {"commonsense", "instruct", "math_code", "chinese"} <= set(ev.available_suites())
    assert ev.load_suite("commonsense").task_names == [
        "hellaswag", "openbookqa", "winogrande", "arc_challenge", "arc_easy", "boolq", "piqa"]
    assert all(t.num_fewshot == 0 for t in ev.load_suite("commonsense").tasks)
    shots = {t.task: t.num_fewshot for t in ev.load_suite("instruct").tasks}
    assert shots == {"mmlu": 5, "bbh_fewshot": 3, "humaneval": 0, "drop": 3}
    assert ev.load_suite("instruct").requires_code_execution
    assert not ev.load_suite("commonsense").requires_code_execution


@pytest.mark.parametrize("name", ev.available_suites())
def test_every_suite_names_only_tasks_in_the_installed_lm_eval(name):
    """Task names (and groups) are checked against lm-eval's own task index, as are the reported metric and
    the code-execution flag of each task."""
    suite = ev.load_suite(name)
    all_tasks = set(ev.lm_eval_task_index())  # the keys of TaskManager().task_index, i.e. TaskManager().all_tasks
    assert set(suite.task_names) <= all_tasks
    assert ev.check_suite_tasks(suite) == []


def test_check_suite_tasks_reports_unknown_task_and_wrong_flags(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tasks": [{"task": "hellaswagg"}, {"task": "humaneval"},
                                             {"task": "hellaswag", "metric": "bleu"}]}))
    errors = ev.check_suite_tasks(ev.load_suite(bad))
    assert any("hellaswagg" in e and "hellaswag" in e.split("close:")[1] for e in errors)
    assert any("humaneval" in e and "unsafe_code" in e for e in errors)
    assert any("bleu" in e for e in errors)


def test_load_suite_reports_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"taks": 1, "tasks": [{"task": "a", "num_fewshot": -1, "foo": 1}, {"x": 1}]}))
    with pytest.raises(ValueError) as e:
        ev.load_suite(bad)
    msg = str(e.value)
    assert "taks" in msg and "num_fewshot" in msg and "foo" in msg and "tasks[1]" in msg
    with pytest.raises(ValueError, match="did you mean 'commonsense'"):
        ev.load_suite("commonsens")


def test_suite_file_problems_come_in_one_message_with_the_closest_key(tmp_path):
    """A suite YAML goes through the configuration parser (tinyllama.config.check_mapping): a misspelt key and a
    mistyped value are both reported, in one error naming the file, the misspelt key with the closest known one."""
    bad = tmp_path / "typos.yaml"
    bad.write_text("descriptoin: typos\nnum_fewshot: five\ntasks:\n  - {task: piqa, lable: PIQA}\n")
    with pytest.raises(ValueError) as e:
        ev.load_suite(bad)
    msg = str(e.value)
    assert str(bad) in msg and "3 problem(s)" in msg
    assert "unknown key 'descriptoin' (suite file); did you mean 'description'?" in msg
    assert "'num_fewshot' (suite file): expected an integer, got 'five'" in msg
    assert "unknown key 'lable' in tasks[0] (piqa); did you mean 'label'?" in msg


def test_reference_file_problems_come_in_one_message(tmp_path):
    bad = tmp_path / "reference.yaml"
    bad.write_text(yaml.safe_dump({"suites": {"commonsense": {
        "source": "s", "metrics": {"piqa": "acc_norm"},
        "rows": [{"model": "m", "tokns": "1T", "avg": "high", "scores": {"piqa": 70.1, "boolq": 60.0}}]}}}))
    with pytest.raises(ValueError) as e:
        ev.load_reference(bad)
    msg = str(e.value)
    assert str(bad) in msg and "3 problem(s)" in msg
    assert "did you mean 'tokens'?" in msg and "'avg' in suites.commonsense.rows[0] (m): expected float, got 'high'" in msg
    assert "no metric declared for ['boolq']" in msg


def test_reference_scores_match_suites_and_published_averages():
    ref = ev.load_reference()
    assert set(ref) <= set(ev.available_suites())
    for suite_name, data in ref.items():
        suite = ev.load_suite(suite_name)
        for task, metric in data["metrics"].items():
            assert suite.get(task) is not None, f"{task} of the reference is not in suite {suite_name}"
            assert suite.get(task).metric.split(",")[0] == metric, f"{suite_name}/{task}: metric differs"
        for row in data["rows"]:
            assert set(row["scores"]) == set(data["metrics"]), row["model"]
            if row.get("avg") is not None:  # catches a mistyped score (the published v1.0 avg is off by 0.02)
                mean = sum(row["scores"].values()) / len(row["scores"])
                assert abs(mean - row["avg"]) < 0.03, (row["model"], mean, row["avg"])
    rows = {r["model"]: r for r in ref["commonsense"]["rows"]}
    assert rows["TinyLlama v1.1"]["scores"]["hellaswag"] == 61.47
    assert ev.parse_tokens(rows["TinyLlama v1.0"]["tokens"]) == 3e12


# ------------------------------------------------------------------------------------------------ the script's checks
def _script(*args, env=None, cwd=None):
    # the script runs with this interpreter (the one that has the requirements), whatever environment runs pytest
    e = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    for k in ("EVAL_OUT", "EVAL_BACKEND", "EVAL_TASKS", "EVAL_DATA_DIR", "ALLOW_CODE_EXECUTION"):
        if env is None or k not in env:
            e.pop(k, None)
    t = time.time()
    p = subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd,
                       timeout=120)
    return p, time.time() - t


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    """A folder that passes the model-folder checks (never loaded: every case fails before)."""
    d = tmp_path_factory.mktemp("m") / "model"
    d.mkdir()
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        (d / f).write_text("{}")
    return d


@pytest.mark.parametrize("case", ["unknown_suite", "missing_path", "missing_run_export", "no_args",
                                  "code_execution", "owned_arg", "vllm_missing", "not_a_model", "hub_offline"])
def test_script_rejects_bad_input_with_a_clear_message(case, fake_model, tmp_path):
    env = {"EVAL_OUT": str(tmp_path / "out")}
    args, expect = {
        "unknown_suite": ([fake_model, "commonsence"], "unknown suite 'commonsence' (did you mean 'commonsense'?)"),
        "missing_path": ([tmp_path / "nope"], "model not found"),
        "missing_run_export": (["outputs/no-such-run/export/final"], "model not found"),
        "no_args": ([], "usage: bash evaluation/run_lm_eval.sh MODEL [SUITE]"),
        "code_execution": ([fake_model, "instruct"], "ALLOW_CODE_EXECUTION=1"),
        "owned_arg": ([fake_model, "--tasks", "piqa"], "use EVAL_TASKS"),
        "vllm_missing": ([fake_model], "vllm is not installed"),
        "not_a_model": ([tmp_path], "is not a model folder"),
        "hub_offline": (["TinyLlama/no-such-model-xyz"], "HF_HUB_OFFLINE=1 and it is not in the local"),
    }[case]
    if case == "vllm_missing":
        import importlib.util

        if importlib.util.find_spec("vllm") is not None:
            pytest.skip("vllm is installed here")
        env["EVAL_BACKEND"] = "vllm"
    p, seconds = _script(*args, env=env)
    assert p.returncode == 2, p.stderr
    assert expect in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()  # nothing written, nothing loaded
    assert seconds < 20


def test_script_runs_the_interpreter_given_in_PYTHON(tmp_path):
    """PYTHON names the interpreter: a wrapper that records its call and hands over to this one is what runs."""
    record = tmp_path / "called"
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" > "{record}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    p, _ = _script(env={"PYTHON": str(wrapper)})
    assert p.returncode == 2 and "usage: bash evaluation/run_lm_eval.sh" in p.stderr
    assert record.read_text().split()[:3] == ["-m", "tinyllama.evaluation", "run"]


def _script_copy(tmp_path, python3_body):
    """The script in a copy of the repository without a .venv, with a PATH whose only python3 is python3_body."""
    (tmp_path / "repo" / "evaluation").mkdir(parents=True)
    script = tmp_path / "repo" / "evaluation" / "run_lm_eval.sh"
    shutil.copy(SCRIPT, script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    (bin_dir / "python3").write_text(python3_body)
    (bin_dir / "python3").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = str(bin_dir)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([shutil.which("bash"), str(script)], capture_output=True, text=True, env=env, timeout=120)


def test_script_without_PYTHON_or_venv_uses_the_python_on_PATH_that_has_lm_eval(tmp_path):
    p = _script_copy(tmp_path, f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    assert p.returncode == 2 and "usage: bash evaluation/run_lm_eval.sh" in p.stderr, p.stderr


def test_script_without_a_python_that_has_lm_eval_says_to_set_PYTHON(tmp_path):
    """A python3 without the requirements is not used silently: one message names PYTHON."""
    p = _script_copy(tmp_path, "#!/bin/sh\nexit 1\n")
    assert p.returncode == 2
    assert "no Python with lm_eval found" in p.stderr and "set PYTHON=" in p.stderr
    assert "Traceback" not in p.stderr and "ModuleNotFoundError" not in p.stderr


# ------------------------------------------------------------------------------------------------ models
def _model_folder(path: Path, tokens=None, step=None):
    path.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        (path / f).write_text("{}")
    if tokens is not None:
        (path / ev.TRAINING_METADATA_FILE).write_text(json.dumps({"tokens_seen": tokens, "step": step}))
    return path


def test_resolve_model_folder_run_export_and_checkpoint(tmp_path):
    run = tmp_path / "outputs" / "myrun"
    export = _model_folder(run / "export" / "step-000200", tokens=819200, step=200)
    (run / "export" / "final").symlink_to("step-000200")
    (run / "checkpoints" / "step-000200").mkdir(parents=True)
    for model in (export, run / "export" / "final", run / "checkpoints" / "step-000200"):
        r = ev.resolve_model(model)
        assert r.source == str(export.resolve()) and r.local
        assert (r.name, r.label, r.tokens_seen, r.step) == ("step-000200", "myrun/step-000200", 819200, 200)
        assert r.default_out() == run.resolve() / "eval"
    plain = _model_folder(tmp_path / "plain")
    r = ev.resolve_model(plain)
    assert (r.run_dir, r.tokens_seen, r.step) == (None, None, None) and r.default_out() == ev.DEFAULT_OUT


def test_checkpoint_without_export_is_exported_with_the_run_folders_own_code(tmp_path, monkeypatch):
    import tinyllama.checkpoints

    ckpt = tmp_path / "run" / "checkpoints" / "step-000300"
    ckpt.mkdir(parents=True)
    calls = []

    def export_checkpoint(checkpoint_dir, out_dir):
        calls.append((Path(checkpoint_dir), Path(out_dir)))
        _model_folder(Path(out_dir), tokens=1000, step=300)
        return Path(out_dir)

    monkeypatch.setattr(tinyllama.checkpoints, "export_checkpoint", export_checkpoint)
    r = ev.resolve_model(ckpt)
    assert calls == [(ckpt.resolve(), ckpt.resolve().parent.parent / "export" / "step-000300")]
    assert (r.name, r.tokens_seen, r.step) == ("step-000300", 1000, 300)


def test_training_metadata_fallbacks(tmp_path):
    d = tmp_path / "step-000042"
    d.mkdir()
    assert ev.read_training_metadata(d) == {"tokens_seen": None, "step": 42}
    (d / "trainer_state.json").write_text(json.dumps({"global_step": 40, "num_input_tokens_seen": 5000}))
    assert ev.read_training_metadata(d) == {"tokens_seen": 5000, "step": 40}
    (d / "training_metadata.json").write_text(json.dumps({"tokens_seen": 6000, "step": 41}))
    assert ev.read_training_metadata(d) == {"tokens_seen": 6000, "step": 41}


def test_lm_eval_commands_one_call_per_shot_count(tmp_path):
    suite = ev.load_suite("instruct")
    model = ev.ResolvedModel(source="/m", name="m", local=True)
    cmds = ev.lm_eval_commands(model, suite.tasks, tmp_path, batch_size="4", dtype="bfloat16", limit=3,
                               allow_code_execution=True, extra_args=["--seed", "1"])
    by_tasks = {c[c.index("--tasks") + 1]: c for c in cmds}
    assert set(by_tasks) == {"mmlu", "bbh_fewshot,drop", "humaneval"}
    for tasks, c in by_tasks.items():
        assert c[c.index("--num_fewshot") + 1] == {"mmlu": "5", "bbh_fewshot,drop": "3", "humaneval": "0"}[tasks]
        assert c[c.index("--model_args") + 1] == "pretrained=/m,dtype=bfloat16"
        assert c[c.index("--output_path") + 1] == str(tmp_path / "results.json")
        assert "--log_samples" in c and c[-2:] == ["--seed", "1"] and c[c.index("--limit") + 1] == "3"
        assert ("--confirm_run_unsafe_code" in c) == (tasks == "humaneval")
    env = lm_eval_env(True)
    assert env["HF_ALLOW_CODE_EVAL"] == "1"


def test_clean_env_drops_distributed_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.setenv(k, "1")
    env = lm_eval_env(False)
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "ACCELERATE_MIXED_PRECISION"} & set(env)
    assert "HF_ALLOW_CODE_EVAL" not in env or os.environ.get("HF_ALLOW_CODE_EVAL")


# ------------------------------------------------------------------------------------------------ offline tasks
def test_offline_tasks_include_lm_evals_yaml_and_override_only_the_data(tmp_path):
    """Hub-snapshot layout (DIR/<dataset_path>/<dataset_name>/<split>-*.parquet) and per-task layout; a tag is
    expanded to its tasks; splits without a local file are set to null; a missing eval split is an error."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from lm_eval.tasks._yaml_loader import load_yaml

    data = tmp_path / "data"
    row = {"id": "1", "question": "q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}
    (data / "allenai" / "ai2_arc" / "ARC-Easy").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row]), data / "allenai/ai2_arc/ARC-Easy/test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([row]), data / "allenai/ai2_arc/ARC-Easy/train-00000-of-00001.parquet")
    (data / "arc_challenge").mkdir()
    (data / "arc_challenge" / "test.jsonl").write_text(json.dumps(row) + "\n")
    out = ev.write_offline_tasks([ev.SuiteTask("ai2_arc", "ARC", 0, None)], data, tmp_path / "tasks")
    assert sorted(p.name for p in out.iterdir()) == ["arc_challenge.yaml", "arc_easy.yaml"]
    easy = yaml.safe_load((out / "arc_easy.yaml").read_text())
    index = ev.lm_eval_task_index()
    assert easy["include"] == str(Path(index["arc_easy"].yaml_path).resolve())
    assert easy["dataset_path"] == "parquet" and easy["dataset_name"] is None
    assert set(easy["dataset_kwargs"]["data_files"]) == {"test", "train"}
    assert easy["validation_split"] is None and "training_split" not in easy
    merged = load_yaml(out / "arc_challenge.yaml", resolve_func=False)  # arc_challenge includes arc_easy.yaml
    assert merged["doc_to_text"] == "Question: {{question}}\nAnswer:" and merged["dataset_path"] == "json"
    assert merged["task"] == "arc_challenge" and merged["training_split"] is None
    with pytest.raises(FileNotFoundError, match="piqa: no local file for split 'validation'"):
        ev.write_offline_tasks([ev.SuiteTask("piqa", "PIQA", 0, None)], data, tmp_path / "t2")
    # few-shot needs the few-shot split too
    (data / "piqa").mkdir()
    (data / "piqa" / "validation.jsonl").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="piqa: no local file for split 'train'"):
        ev.write_offline_tasks([ev.SuiteTask("piqa", "PIQA", 5, None)], data, tmp_path / "t3")


def test_leaf_tasks_expand_groups():
    index = ev.lm_eval_task_index()
    leaves = ev.leaf_tasks("mmlu", index)
    assert len(leaves) == 57 and "mmlu_abstract_algebra" in leaves
    assert ev.leaf_tasks("hellaswag", index) == ["hellaswag"]


def test_script_reports_missing_offline_data_before_loading(fake_model, tmp_path):
    (tmp_path / "data" / "piqa").mkdir(parents=True)
    p, _ = _script(fake_model, env={"EVAL_OUT": str(tmp_path / "out"), "EVAL_DATA_DIR": str(tmp_path / "data")})
    assert p.returncode == 2 and "offline data incomplete" in p.stderr and "Traceback" not in p.stderr
    for task in ("hellaswag", "openbookqa", "winogrande", "arc_challenge", "arc_easy", "boolq", "piqa"):
        assert f"  - {task}: no local file for split" in p.stderr
    assert not (tmp_path / "out").exists()


def test_lm_eval_task_index_is_kept_on_disk_and_rebuilt_when_unreadable(tmp_path, monkeypatch):
    """lm-eval's index (14 s to build) is built once per installed lm-eval and read back from the cache folder; a
    cache file that cannot be read is rebuilt, not trusted."""
    import lm_eval.tasks

    from tinyllama.evaluation.suites import lm_eval_task_index

    built = []

    class Manager:  # stands in for lm-eval's TaskManager: counts the builds
        def __init__(self):
            built.append(1)
            self.task_index = {"arc_easy": ("entry", len(built))}

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Manager)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    index = lm_eval_task_index.__wrapped__  # (without the per-process cache)
    assert index() == {"arc_easy": ("entry", 1)} and len(built) == 1
    [cache] = (tmp_path / "tinyllama").glob("lm-eval-index-*.pkl")
    assert index() == {"arc_easy": ("entry", 1)} and len(built) == 1  # read back, not rebuilt
    cache.write_bytes(b"not a pickle")
    assert index() == {"arc_easy": ("entry", 2)} and len(built) == 2
    assert index() == {"arc_easy": ("entry", 2)} and len(built) == 2
