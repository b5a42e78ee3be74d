import json
import time

import pyarrow.parquet as pq


def test_demo_builds_offline_quickly_and_deterministically(tmp_path):
    from tinyllama.demo_corpus import build_demo

    start = time.perf_counter()
    paths = build_demo(tmp_path / "demo")
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"demo build took {elapsed:.0f}s"
    again = build_demo(tmp_path / "demo2")
    for key in ("slimpajama", "proof_pile_2", "skypile"):
        assert paths[key].read_bytes() == again[key].read_bytes()
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):  # SentencePiece model + its conversion
        assert (paths["tokenizer"] / name).read_bytes() == (again["tokenizer"] / name).read_bytes()


def test_a_demo_folder_with_the_previous_tokenizer_is_rebuilt(tmp_path):
    """A data/demo from before the SentencePiece demo tokenizer (tokenizer.json only): the tokenizer is trained
    again and the shards and chat base model made with the old one are removed (rebuilt on first use)."""
    from tinyllama.demo_corpus import build_demo

    paths = build_demo(tmp_path / "demo")
    (paths["tokenizer"] / "tokenizer.model").unlink()
    for stale in ("tokenized/slimpajama", "chat/base", "chat/ultrachat_200k"):
        (tmp_path / "demo" / stale).mkdir(parents=True)
    build_demo(tmp_path / "demo")
    assert (paths["tokenizer"] / "tokenizer.model").is_file()
    assert not (tmp_path / "demo" / "tokenized").exists() and not (tmp_path / "demo" / "chat" / "base").exists()
    assert (tmp_path / "demo" / "chat" / "ultrachat_200k").is_dir()  # not made with the tokenizer: kept


def test_demo_corpus_uses_the_real_schemas(demo_paths):
    rows = [json.loads(line) for line in demo_paths["slimpajama"].open()]
    sets = {r["meta"]["redpajama_set_name"] for r in rows}
    assert "RedPajamaGithub" in sets and "RedPajamaWikipedia" in sets and all(r["text"] for r in rows)
    table = pq.read_table(demo_paths["starcoderdata"])
    assert "content" in table.column_names and table.num_rows > 20
    math_rows = [json.loads(line) for line in demo_paths["proof_pile_2"].open()]
    assert all("text" in r and "meta" in r for r in math_rows)
    zh = [json.loads(line)["text"] for line in demo_paths["skypile"].open()]
    assert any("床前明月光" in t for t in zh)


def test_demo_tokenizer_is_llama_style_and_round_trips(demo_tokenizer, demo_paths):
    tok = demo_tokenizer
    assert len(tok) == 4096
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]
    samples = ["Hello  world\n\ttab", "def f(x):\n    return x ** 2  # ünïcödé 😀", "床前明月光，疑是地上霜。",
               " leading and trailing ", "", "\u200b zero width"]
    samples += [json.loads(line)["text"] for line in list(demo_paths["skypile"].open())[:20]]
    for text in samples:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    # bytes never seen in training fall back to <0xNN> tokens, not <unk>
    assert tok.unk_token_id not in tok("☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢")["input_ids"]
