"""Every YAML shipped under configs/ (and evaluation/) parses with the parser of the entry point that reads it,
so no shipped recipe can rot. A YAML that no parser claims fails the test: add its parser here."""

import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _parsers():
    """(glob relative to the repo, function that parses the file and raises on a problem)."""
    return [
        ("evaluation/suites/*.yaml", _check_eval_suite),
        ("evaluation/reference/*.yaml", _check_eval_reference),
        ("configs/data/*.yaml", lambda p: __import__("tinyllama.data.prepare", fromlist=["_"]).load_config(p)),
        ("configs/chat/*.yaml", _parse_chat_config),
        ("configs/accelerate/*.yaml", _parse_accelerate_config),
        ("configs/pretrain/*.yaml", _parse_pretrain_config),
        ("configs/continual/*.yaml", _parse_pretrain_config),
        ("configs/cooldown/*.yaml", _parse_pretrain_config),
        ("configs/pipeline/*.yaml", _plan_pipeline),
    ]


YAMLS = sorted(p for d in ("configs", "evaluation") for p in (REPO / d).rglob("*.y*ml"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_parses(path):
    rel = str(path.relative_to(REPO))
    for pattern, parse in _parsers():
        if fnmatch.fnmatch(rel, pattern):
            parse(path)
            return
    pytest.fail(f"no parser claims {rel}: add one to tests/test_every_config.py")


def _check_eval_suite(path):
    """A suite parses and names only tasks (and metrics) that exist in the installed lm-eval's task index."""
    from tinyllama.evaluation import check_suite_tasks, load_suite

    errors = check_suite_tasks(load_suite(path))
    assert not errors, errors


def _check_eval_reference(path):
    """Reference scores parse, and every task/metric they state is the one the suite of that name reports."""
    from tinyllama.evaluation import load_reference, load_suite

    for suite_name, ref in load_reference(path).items():
        suite = load_suite(suite_name)
        for task, metric in ref["metrics"].items():
            assert suite.get(task) is not None and suite.get(task).metric.split(",")[0] == metric, (suite_name, task)


def _parse_chat_config(path):
    """recipes/sft.py and recipes/dpo.py's parser (sft-*.yaml / dpo-*.yaml). use_cpu only lifts TrainingArguments'
    device check, so the bf16 GPU configs parse on a CPU machine too; every key is still checked."""
    from tinyllama.chat.args import parse_chat_config

    parse_chat_config(path, ["--use_cpu", "true"])


def _parse_pretrain_config(path):
    """recipes/pretrain.py's parser (stage configs: pretrain, continual, cooldown; `base:` resolved)."""
    from tinyllama.config import parse_config
    from tinyllama.training.args import PretrainArgs

    parse_config(PretrainArgs, ["--config", str(path)])


def _parse_accelerate_config(path):
    """accelerate's own loader (unknown keys raise); a DeepSpeed JSON it names must exist, parse, and leave the
    recipe's values as 'auto' so that they are filled from the recipe."""
    import json

    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    ds = (config.deepspeed_config or {}).get("deepspeed_config_file")
    if ds:
        values = json.loads((REPO / ds).read_text())
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
            assert values[key] == "auto", (ds, key)
        assert config.mixed_precision in (None, "no"), "precision comes from the recipe with a DeepSpeed JSON"


def _plan_pipeline(path):
    """scripts/pipeline.py's reader: the file, then every variant's plan with every optional stage (each pretraining
    stage's config parsed with the pipeline's overrides)."""
    from tinyllama.pipeline import load_pipeline, plan

    pipeline = load_pipeline(path)
    for variant in pipeline.variants:
        assert plan(pipeline, variant, with_chat=True, with_eval=True)


def test_reproduction_data_configs_neither_deduplicate_nor_decontaminate():
    """TinyLlama did neither: every data config but the "your own data" example keeps both steps off."""
    from tinyllama.data.prepare import load_config

    for path in sorted((REPO / "configs" / "data").glob("*.yaml")):
        cfg = load_config(path)
        screening = [cfg.screening(s) for s in cfg.source_specs()]
        if path.name == "own-corpus.yaml":
            assert all(d is not None and c is not None and c.mode == "drop" for d, c in screening)
        else:
            assert all(s == (None, None) for s in screening), path.name
