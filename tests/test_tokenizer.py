"""SentencePiece-exact fast tokenizers (tinyllama/tokenizer.py, scripts/convert_tokenizer.py): the demo tokenizer's
tokenizer.json gives its tokenizer.model's ids, a Llama-2-style model (whitespace pieces scored -1e9) converts
exactly where transformers' LlamaTokenizer conversion does not, and a saved folder round-trips through
AutoTokenizer."""

import json
import shutil
from pathlib import Path

import pytest

from tinyllama.tokenizer import (TOKENIZER_CLASS, compare_with_sentencepiece, fast_tokenizer_from_sentencepiece,
                                 load_proto, save_tokenizer_folder, sentencepiece_processor)

# What breaks converters: indentation, runs of spaces, a leading space (SentencePiece's dummy prefix is added even
# then), tabs, newlines, Chinese, emoji and rare characters (byte fallback), digits (split one by one).
EDGE_TEXTS = [
    "def f(x):\n    if x:\n        return x ** 2  # comment\n\treturn 0\n",
    "a  b   c    d", " leading", "  two leading", "trailing  ", " ", "  ", "\n", "\t\tx", "x\n\n\n  y",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。", "emoji 😀🎉 and ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 龘", "12345 + 6.78 = 12351.78; 2024-01-01",
    "ünïcödé naïve café", "x\u3000y\u00a0z\u200bw", "<0x41> ▁ ▁▁ literal",
]


# runs of spaces in several contexts: where SentencePiece breaks ties between equal scores (Llama-2's whitespace
# pieces are all scored -1e9)
SPACE_RUNS = [t for n in range(1, 101) for t in (" " * n, "x" + " " * n + "y", "\n" + " " * n + "return",
                                                 "0" + " " * n + "#", "a\t" + " " * n + "\tb", "é" + " " * n + "中")]


def _sample(demo_paths, per_source=40):
    """The first documents of each demo source, plus the edge cases."""
    import pyarrow.parquet as pq

    texts = []
    for key in ("slimpajama", "proof_pile_2", "skypile"):
        with open(demo_paths[key], encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(per_source), f)]
    texts += pq.read_table(demo_paths["starcoderdata"], columns=["content"]).column("content").to_pylist()[:per_source]
    return texts + EDGE_TEXTS


@pytest.fixture(scope="module")
def llama_style_model(tmp_path_factory, demo_paths):
    """The demo tokenizer.model with its whitespace-only pieces re-scored -1e9, as in Llama-2's model (Meta added
    them that way: merged last). SentencePiece then merges by score, no longer in id order."""
    proto = load_proto(demo_paths["tokenizer"] / "tokenizer.model")
    changed = 0
    for p in proto.pieces:
        if p.type == p.NORMAL and len(p.piece) > 1 and set(p.piece) == {"▁"}:
            p.score = -1e9
            changed += 1
    assert changed >= 3  # the demo model learned '▁▁', '▁▁▁▁', ... from indented code
    path = tmp_path_factory.mktemp("llama_style") / "tokenizer.model"
    path.write_bytes(proto.SerializeToString())
    return path


def test_demo_tokenizer_json_gives_the_sentencepiece_ids(demo_paths, demo_tokenizer):
    model = demo_paths["tokenizer"] / "tokenizer.model"
    sp = sentencepiece_processor(model)
    texts = _sample(demo_paths)
    result = compare_with_sentencepiece(demo_tokenizer, sp, texts)
    assert result.exact, result.summary()
    assert result.documents == len(texts) and result.tokens_sentencepiece > 20_000
    # the sample does exercise the cases: the byte fallback and the dummy prefix before a leading space
    ids = demo_tokenizer(" leading", add_special_tokens=False)["input_ids"]
    assert ids == sp.encode(" leading") and "".join(demo_tokenizer.convert_ids_to_tokens(ids)) == "▁▁leading"
    assert any(t.startswith("<0x") for t in demo_tokenizer.tokenize("☃ 𝔘"))
    # BOS added like Llama's tokenizer, EOS not; decoding gives the text back, as SentencePiece's does (a literal
    # '▁' in the text comes back as a space on both sides)
    for text in EDGE_TEXTS:
        ids = demo_tokenizer(text)["input_ids"]
        assert ids == [1] + sp.encode(text)
        decoded = demo_tokenizer.decode(ids, skip_special_tokens=True)
        assert decoded == sp.decode(ids[1:]) and (decoded == text or "▁" in text)
    assert demo_tokenizer("a", "b")["input_ids"] == [1, *sp.encode("a"), 1, *sp.encode("b")]


def test_merges_follow_scores_where_transformers_llama_conversion_does_not(llama_style_model, demo_paths, tmp_path):
    from transformers import AutoTokenizer, LlamaTokenizer

    sp = sentencepiece_processor(llama_style_model)
    texts = _sample(demo_paths) + SPACE_RUNS
    ours = fast_tokenizer_from_sentencepiece(llama_style_model)
    result = compare_with_sentencepiece(ours, sp, texts)
    assert result.exact, result.summary()
    # transformers 5.24's own conversion (what LlamaTokenizer.from_pretrained does with a bare tokenizer.model)
    # orders merges by piece id and skips the dummy prefix before a leading space: most code differs
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(llama_style_model, bare / "tokenizer.model")
    theirs = compare_with_sentencepiece(LlamaTokenizer.from_pretrained(str(bare)), sp, texts)
    assert theirs.differing_documents > 100, theirs.summary()
    first = theirs.first_difference
    assert first["sentencepiece"] != first["fast"] and "differ" in theirs.summary()
    # AutoTokenizer on the bare tokenizer.model (transformers' SpmConverter.build_tokenizer_from_spm_proto) ranks by
    # score too, but breaks ties by piece id: runs of spaces come out unlike SentencePiece's (why ours breaks them
    # by the longer left part, see score_ranked_merges)
    builder = compare_with_sentencepiece(AutoTokenizer.from_pretrained(str(bare)), sp, SPACE_RUNS)
    assert builder.differing_documents > 20, builder.summary()


def test_saved_folder_round_trips_through_autotokenizer(llama_style_model, demo_paths, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig

    out = save_tokenizer_folder(llama_style_model, tmp_path / "tok", chat_template="{{ messages[0]['content'] }}")
    assert sorted(p.name for p in out.iterdir()) == ["chat_template.jinja", "tokenizer.json", "tokenizer.model",
                                                     "tokenizer_config.json"]
    assert (out / "tokenizer.model").read_bytes() == llama_style_model.read_bytes()
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == TOKENIZER_CLASS
    saved = json.loads((out / "tokenizer.json").read_text())
    # a model folder (config.json of model_type llama) must not make AutoTokenizer rebuild it as a LlamaTokenizer
    LlamaConfig(vocab_size=4096, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=1).save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert json.loads(tok.backend_tokenizer.to_str()) == saved
    assert tok.chat_template == "{{ messages[0]['content'] }}"
    assert compare_with_sentencepiece(tok, llama_style_model, _sample(demo_paths, per_source=10)).exact


def test_unigram_models_are_refused_with_a_clear_message(tmp_path, demo_paths):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(EDGE_TEXTS * 20), model_prefix=str(tmp_path / "uni"),
                                   model_type="unigram", vocab_size=150, minloglevel=2, hard_vocab_limit=False)
    with pytest.raises(ValueError, match="UNIGRAM model; this converter handles BPE"):
        fast_tokenizer_from_sentencepiece(tmp_path / "uni.model")
