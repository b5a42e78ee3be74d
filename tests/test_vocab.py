"""Tokenizer coverage of a new language and vocabulary extension (tinyllama/vocab.py, scripts/{tokenizer_coverage,
extend_vocab}.py) on the demo tokenizer and the demo's Chinese sample."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from pretrain_utils import REPO, run_cli, run_inprocess, write_config
from tinyllama.vocab import coverage, extend_vocab, new_characters, read_texts

ZH = REPO / "data" / "demo" / "raw" / "skypile" / "train.jsonl"


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, demo_paths, demo_tokenizer):
    """A tiny model folder with the demo tokenizer and its tokenizer.model (what an export looks like)."""
    from tinyllama.model import build_model
    from tinyllama.tokenizer import save_tokenizer

    out = tmp_path_factory.mktemp("vocab") / "base"
    model = build_model("tiny", seed=0)
    model.save_pretrained(out)
    assert save_tokenizer(demo_tokenizer, out) is not None
    return out


def test_coverage_counts_tokens_per_character_and_byte_fallback(demo_tokenizer):
    tok = demo_tokenizer
    vocab = tok.get_vocab()
    missing = next(c for c in "龘齉靐鬱" if c not in vocab)  # rare characters the demo tokenizer spells in bytes
    known = "明月"
    assert all(c in vocab for c in known)
    texts = [known + missing, missing + " " + missing]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    n_bytes = sum(1 for i in sum(ids, []) if tok.convert_ids_to_tokens(i).startswith("<0x"))
    assert n_bytes == 3 * 3  # three occurrences, three UTF-8 bytes each
    c = coverage(tok, texts)
    assert c["characters"] == 5 and c["tokens"] == sum(map(len, ids))  # spaces are not characters
    assert c["tokens_per_character"] == pytest.approx(c["tokens"] / 5)
    assert c["byte_fallback_tokens"] == 9 and c["byte_fallback_rate"] == pytest.approx(9 / c["tokens"])
    assert c["characters_without_token"] == 1 and c["share_of_characters_without_token"] == pytest.approx(3 / 5)
    assert c["most_frequent_without_token"] == [[missing, 3]]
    assert new_characters(tok, texts, max_new=10) == [missing]
    assert new_characters(tok, texts, max_new=10, min_count=4) == []


def test_extend_vocab_mean_rows_shorter_tokenization_and_usable_as_init_from(base_model, demo_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = read_texts(ZH)
    new = new_characters(demo_tokenizer, texts, max_new=50)
    assert len(new) == 50
    out = tmp_path / "extended"
    info = extend_vocab(base_model, out, new, pad_to_multiple_of=64)
    assert (info["old_rows"], info["tokenizer_size"], info["new_rows"]) == (4096, 4146, 4160)

    old = load_file(str(base_model / "model.safetensors"))
    got = load_file(str(out / "model.safetensors"))
    for key in ("model.embed_tokens.weight", "lm_head.weight"):  # untied, like TinyLlama: both grow
        assert got[key].shape == (4160, old[key].shape[1])
        assert torch.equal(got[key][:4096], old[key])  # old rows unchanged
        mean = old[key].mean(dim=0)
        assert all(torch.equal(row, mean) for row in got[key][4096:])  # every new row (and padding) = the mean
    assert all(torch.equal(got[k], old[k]) for k in old if "embed_tokens" not in k and "lm_head" not in k)

    tok = AutoTokenizer.from_pretrained(out)
    assert [tok.convert_tokens_to_ids(c) for c in new] == list(range(4096, 4146))
    before = sum(len(demo_tokenizer(t)["input_ids"]) for t in texts)
    after = sum(len(tok(t)["input_ids"]) for t in texts)
    assert after == before - 2 * sum(t.count(c) for t in texts for c in new)  # 3 byte tokens -> 1 token each
    assert coverage(tok, texts)["byte_fallback_tokens"] < coverage(demo_tokenizer, texts)["byte_fallback_tokens"]
    assert tok.decode(tok(texts[0])["input_ids"], skip_special_tokens=True) == texts[0]  # still round-trips
    # the tokenizer.model is extended with the same pieces: SentencePiece (llama.cpp, lit_gpt) gives the same ids
    from tinyllama.tokenizer import compare_with_sentencepiece, load_proto, sentencepiece_processor

    assert [p.piece for p in load_proto(out / "tokenizer.model").pieces[4096:]] == new
    result = compare_with_sentencepiece(tok, out / "tokenizer.model", texts)
    assert result.exact and result.tokens_sentencepiece == after - len(texts), result.summary()
    assert sentencepiece_processor(base_model / "tokenizer.model").encode(new[0]) != [4096]  # the old one: bytes

    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok(new[0] + new[1], return_tensors="pt")["input_ids"]
    assert ids.max() >= 4096
    logits = model(input_ids=ids).logits
    assert logits.shape[-1] == 4160 and torch.isfinite(logits).all()

    # the folder is an init_from: data prepared with its tokenizer, two pretraining steps
    from tinyllama.data import prepare_data

    data = tmp_path / "data"
    prepare_data(["--config", str(REPO / "configs/data/demo.yaml"), "--tokenizer", str(out), "--output_dir",
                  str(data), "--only", "skypile", "--build_demo", "null"])
    manifest = json.loads((data / "skypile" / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 4146
    cfg = write_config(tmp_path)
    summary = run_inprocess(cfg, "--output_dir", str(tmp_path / "run"), "--model_config", "null", "--init_from",
                            str(out), "--tokenizer", str(out), "--data_dir", str(data), "--prepare_config", "null",
                            "--mixture", "{skypile: 1.0}", "--max_steps", "2", "--eval_every", "0")
    assert summary["step"] == 2
    cont = load_file(str(tmp_path / "run" / "export" / "final" / "model.safetensors"))
    assert cont["model.embed_tokens.weight"].shape[0] == 4160


@pytest.mark.slow
def test_scripts(base_model, tmp_path):
    r = run_cli([sys.executable, "scripts/tokenizer_coverage.py", "--data", str(ZH), "--json",
                 str(tmp_path / "c.json")])
    assert r.returncode == 0, r.stderr
    assert "tokens per character" in r.stdout and "byte-fallback tokens" in r.stdout
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["characters"] > 100_000 and 0 < c["byte_fallback_rate"] < 1
    r = run_cli([sys.executable, "scripts/extend_vocab.py", "--model", str(base_model), "--data", str(ZH),
                 "--max_new", "5", "--out", str(tmp_path / "ext")])
    assert r.returncode == 0, r.stderr
    assert "added 5 tokens" in r.stdout and "before" in r.stdout and "after" in r.stdout
    assert json.loads((tmp_path / "ext" / "vocab_extension.json").read_text())["new_rows"] == 4160
