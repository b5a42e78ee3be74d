"""The held-out perplexity / bits-per-byte metric: an `evaluate` module loaded from its local path, offline,
checked against the model's own loss; its command writes results the report shows."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinyllama import evaluation as ev

REPO = Path(__file__).resolve().parent.parent
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Perplexity depends on the tokenizer; bits per byte do not. Ünïcödé costs more bytes: 中文也是。",
    "def add(a, b):\n    return a + b\n" * 6,
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_tokenizer):
    from tinyllama.model import build_model

    d = tmp_path_factory.mktemp("ppl") / "run" / "export" / "step-000050"
    model = build_model("tiny", seed=0)
    model.save_pretrained(d)
    demo_tokenizer.save_pretrained(d)
    (d / ev.TRAINING_METADATA_FILE).write_text(json.dumps({"tokens_seen": 204800, "step": 50}))
    return d, model.eval(), demo_tokenizer


def _manual(model, tokenizer, texts):
    """Total NLL (nats) from the model's own loss, one full-context forward per text with BOS prefixed."""
    nll, tokens, nbytes = 0.0, 0, 0
    for text in texts:
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()  # mean over the len-1 predicted tokens
        nll += loss * (ids.shape[1] - 1)
        tokens += ids.shape[1] - 1
        nbytes += len(text.encode("utf-8"))
    return nll, tokens, nbytes


def test_metric_loads_offline_from_its_path_and_matches_the_models_loss(tiny):
    import evaluate

    path, model, tokenizer = tiny
    metric = evaluate.load(str(ev.PERPLEXITY_METRIC))  # HF_HUB_OFFLINE=1: nothing fetched
    result = metric.compute(predictions=TEXTS, model_id=str(path), batch_size=2)
    nll, tokens, nbytes = _manual(model, tokenizer, TEXTS)
    assert result["num_tokens"] == tokens and result["num_bytes"] == nbytes == sum(len(t.encode()) for t in TEXTS)
    assert result["nll_per_token"] == pytest.approx(nll / tokens, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-5)
    # an already loaded model (what the chat recipes pass) gives the same numbers
    again = metric.compute(predictions=TEXTS, model=model, tokenizer=tokenizer)
    assert again["bits_per_byte"] == pytest.approx(result["bits_per_byte"], rel=1e-5)


def test_windows_score_every_token_once(tiny):
    """Texts longer than the window: scored in windows, each token exactly once, each window re-reading the
    tokens before it; equals the sum of the windows' own losses."""
    path, model, tokenizer = tiny
    metric = ev.perplexity_metric()
    text = TEXTS[2]
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    window, stride = 16, 8
    result = metric.compute(predictions=[text], model=model, tokenizer=tokenizer, max_length=window, stride=stride)
    assert result["num_tokens"] == len(ids) - 1
    nll, scored = 0.0, 1
    while scored < len(ids):
        end = min(scored + stride, len(ids))
        begin = max(0, end - window)
        x = torch.tensor([ids[begin:end]])
        labels = x.clone()
        labels[0, :scored - begin] = -100
        with torch.no_grad():
            loss = model(input_ids=x, labels=labels).loss.item()
        nll += loss * (end - scored)
        scored = end
    assert result["nll_per_token"] == pytest.approx(nll / (len(ids) - 1), rel=1e-5)
    full = metric.compute(predictions=[text], model=model, tokenizer=tokenizer)
    assert full["num_tokens"] == result["num_tokens"] and full["bits_per_byte"] != result["bits_per_byte"]


@pytest.mark.slow
def test_perplexity_command_writes_results_the_report_shows(tiny, tmp_path):
    path, _, _ = tiny
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    p = subprocess.run([sys.executable, "-m", "tinyllama.evaluation", "perplexity", str(path), str(data),
                        "--out", str(tmp_path / "eval")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr
    folder = tmp_path / "eval" / "step-000050" / "perplexity"
    result = json.loads((folder / ev.PERPLEXITY_RESULTS_FILE).read_text())
    assert result["num_texts"] == 3 and result["bits_per_byte"] > 0
    p = subprocess.run([sys.executable, str(REPO / "evaluation" / "report.py"), str(tmp_path / "eval"),
                        "--out", str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "### held-out perplexity" in p.stdout
    row = next(line for line in p.stdout.splitlines() if line.startswith("| run/step-000050"))
    assert f"{result['bits_per_byte']:.4f}" in row and "205K" in row
    bad = subprocess.run([sys.executable, "-m", "tinyllama.evaluation", "perplexity", str(path), str(data),
                          "--text_field", "body"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert bad.returncode == 2 and "no column 'body'" in bad.stderr and "Traceback" not in bad.stderr
