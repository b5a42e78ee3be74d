"""The two shared answers: what the environment says (tinyllama/environment.py) and "a Hub id or a local path?"
(tinyllama.utils.is_hub_id), which models, checkpoints, teachers and data sources all ask."""

import pytest

from tinyllama import environment
from tinyllama.utils import is_hub_id


@pytest.mark.parametrize("name", ["TinyLlama/TinyLlama_v1.1", "HuggingFaceH4/ultrachat_200k", "gpt2",
                                  "meta-llama/Llama-2-7b-hf"])
def test_hub_ids(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id(name)


@pytest.mark.parametrize("name", ["./model", "../model", "/abs/model", "~/model", "outputs/run/export/final",
                                  "data/demo/chat", "a/b/c", "owner/name/", "with space/x", "", None])
def test_paths(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id(name)


def test_what_is_on_disk_is_a_path(tmp_path, monkeypatch):
    """An existing folder, or a name under a folder that exists here, is local even when it looks like owner/name
    (a mistyped folder then gets "not found" rather than a Hub lookup)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "model").mkdir(parents=True)
    (tmp_path / "gpt2").mkdir()
    assert not is_hub_id("owner/model")
    assert not is_hub_id("owner/typo")
    assert not is_hub_id("gpt2")
    assert is_hub_id("other/model")


def test_eval_settings(monkeypatch):
    for k in ("EVAL_OUT", "EVAL_BACKEND", "EVAL_TASKS", "EVAL_CHAT_TEMPLATE", "ALLOW_CODE_EXECUTION"):
        monkeypatch.delenv(k, raising=False)
    assert environment.eval_settings() == environment.EvalSettings()
    monkeypatch.setenv("EVAL_TASKS", "arc_easy,piqa")
    monkeypatch.setenv("EVAL_OUT", "  ")  # blank is unset
    monkeypatch.setenv("ALLOW_CODE_EXECUTION", "yes")
    monkeypatch.setenv("EVAL_CHAT_TEMPLATE", "0")
    s = environment.eval_settings()
    assert (s.tasks, s.out, s.allow_code_execution, s.chat_template) == ("arc_easy,piqa", None, True, False)
    monkeypatch.setenv("EVAL_CHAT_TEMPLATE", "maybe")
    with pytest.raises(ValueError, match="EVAL_CHAT_TEMPLATE must be 1 or 0"):
        environment.eval_settings()


def test_launcher_and_offline(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "True")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert environment.world_size() == 4 and environment.launched_with_deepspeed()
    assert not environment.offline() and environment.offline(datasets=True)
