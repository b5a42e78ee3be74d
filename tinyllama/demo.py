"""The embedded demo corpus and tokenizer: everything a newcomer (and the test suite) needs, with no network.

The corpus is built from what every Python install ships, written in the schemas of the real data sets so the
real preparation code reads it unchanged:

| file                                   | stands in for               | from                                        |
|----------------------------------------|-----------------------------|---------------------------------------------|
| ``raw/slimpajama/train.jsonl``         | cerebras/SlimPajama-627B    | ``pydoc_data.topics`` (English prose), plus |
|                                        |                             | a few ``RedPajamaGithub`` rows to filter    |
| ``raw/starcoderdata/python/*.parquet`` | bigcode/starcoderdata       | the standard library's ``.py`` files        |
| ``raw/proof-pile-2/train.jsonl``       | EleutherAI/proof-pile-2     | generated arithmetic and algebra            |
| ``raw/skypile/train.jsonl``            | Skywork/SkyPile-150B        | public-domain Chinese texts + generated     |

The tokenizer is a byte-fallback BPE trained on that corpus with the ``tokenizers`` library, Llama-style
(``<unk>``=0, ``<s>``=1, ``</s>``=2, ``▁`` for spaces, BOS added on encode), saved as a normal
``PreTrainedTokenizerFast`` folder. Real recipes name the Llama-2 tokenizer on the Hub instead.

``python scripts/build_demo.py [--out data/demo]`` builds it (deterministic; a rerun reuses what exists).
"""

from __future__ import annotations

import collections
import json
import logging
import random
import sysconfig
from pathlib import Path

from .utils import atomic_dir, atomic_write_text, repo_root

log = logging.getLogger(__name__)

DEMO_DIR = repo_root() / "data" / "demo"
DEMO_VOCAB_SIZE = 4096
CODE_BYTES = 2_000_000  # cap on the standard-library code taken, in bytes (deterministic: sorted file order)
_RP_SETS = ["RedPajamaWikipedia", "RedPajamaBook", "RedPajamaArXiv", "RedPajamaStackExchange", "RedPajamaC4",
            "RedPajamaCommonCrawl"]


def prose_documents() -> list[str]:
    """English prose: the Python reference manual's topics, split into documents of a few paragraphs."""
    import pydoc_data.topics

    docs = []
    for name in sorted(pydoc_data.topics.topics):
        paragraphs = [p.strip("\n") for p in pydoc_data.topics.topics[name].split("\n\n") if p.strip()]
        chunk: list[str] = []
        for p in paragraphs:
            chunk.append(p)
            if sum(len(c) for c in chunk) > 3000:
                docs.append("\n\n".join(chunk))
                chunk = []
        if chunk:
            docs.append("\n\n".join(chunk))
    return docs


def code_files() -> list[tuple[str, str]]:
    """(path, source) of the standard library's top-level modules, up to ``CODE_BYTES``."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    out, total = [], 0
    for path in sorted(lib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > CODE_BYTES:
            continue
        out.append((path.name, text))
        total += len(text)
    return out


def math_documents(n: int = 1500, seed: int = 0) -> list[str]:
    """Generated arithmetic and algebra in a proof-pile-like style (statement, worked solution, LaTeX)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        kind = i % 4
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(1, 50)
        if kind == 0:
            docs.append(f"Problem: Compute ${a} \\times {b}$.\nSolution: ${a} \\times {b} = {a * b}$. "
                        f"The answer is $\\boxed{{{a * b}}}$.")
        elif kind == 1:
            x = rng.randint(-20, 20)
            docs.append(f"Problem: Solve for $x$: ${a}x + {c} = {a * x + c}$.\nSolution: Subtract {c} from both "
                        f"sides: ${a}x = {a * x}$. Divide by {a}: $x = {x}$.")
        elif kind == 2:
            docs.append(f"Lemma. For all integers $n \\geq 1$, $\\sum_{{k=1}}^{{n}} k = \\frac{{n(n+1)}}{{2}}$.\n"
                        f"Example: for $n = {a}$ the sum is ${a * (a + 1) // 2}$.\nProof. By induction on $n$; "
                        f"the case $n = 1$ is clear, and adding $n+1$ to both sides gives the claim. $\\square$")
        else:
            g = __import__("math").gcd(a, b)
            docs.append(f"Problem: Find $\\gcd({a}, {b})$.\nSolution: By the Euclidean algorithm, "
                        f"$\\gcd({a}, {b}) = {g}$, so $\\operatorname{{lcm}}({a}, {b}) = {a * b // g}$.")
    return docs


def chinese_documents(n: int = 1200, seed: int = 0) -> list[str]:
    """Public-domain classical Chinese (shipped in the package) plus generated modern sentences."""
    lines = (Path(__file__).parent / "demo_data" / "chinese.txt").read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.startswith("#"))
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    rng = random.Random(seed)
    who = ["小明", "老师", "我的朋友", "这位科学家", "学生们", "我们", "那个孩子", "工程师"]
    when = ["今天", "昨天早上", "每个周末", "去年冬天", "下课以后", "明天下午"]
    what = ["去图书馆看书", "在公园里散步", "学习数学和物理", "写了一篇关于语言模型的文章", "做了一顿丰盛的晚饭",
            "参观了博物馆", "训练了一个小型神经网络", "和家人一起包饺子"]
    why = ["因为天气很好", "因为考试快到了", "因为他们喜欢学习", "为了了解更多知识", "因为这是一个好习惯"]
    docs = list(blocks)
    for _ in range(n):
        sentences = [f"{rng.choice(when)}，{rng.choice(who)}{rng.choice(what)}，{rng.choice(why)}。"
                     for _ in range(rng.randint(2, 6))]
        docs.append("".join(sentences))
    return docs


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def build_corpus(out: Path) -> dict[str, Path]:
    """Write the raw demo corpus under ``out/raw`` in the real data sets' schemas; return the source paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = out / "raw"
    paths = {
        "slimpajama": raw / "slimpajama" / "train.jsonl",
        "starcoderdata": raw / "starcoderdata" / "python" / "train-00000-of-00001.parquet",
        "proof_pile_2": raw / "proof-pile-2" / "train.jsonl",
        "skypile": raw / "skypile" / "train.jsonl",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    code = code_files()
    prose = prose_documents()
    sp_rows = [{"text": t, "meta": {"redpajama_set_name": _RP_SETS[i % len(_RP_SETS)]}} for i, t in enumerate(prose)]
    # SlimPajama carries GitHub rows that TinyLlama dropped; the demo keeps a few so the filter has work to do.
    for i, (_, src) in enumerate(code[:12]):
        sp_rows.insert(7 * i + 3, {"text": src, "meta": {"redpajama_set_name": "RedPajamaGithub"}})
    _write_jsonl(paths["slimpajama"], sp_rows)

    table = pa.table({
        "max_stars_repo_path": [f"Lib/{name}" for name, _ in code],
        "max_stars_repo_name": ["python/cpython"] * len(code),
        "max_stars_count": [1] * len(code),
        "id": [str(i) for i in range(len(code))],
        "content": [src for _, src in code],
    })
    paths["starcoderdata"].parent.mkdir(parents=True, exist_ok=True)
    tmp = paths["starcoderdata"].with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(paths["starcoderdata"])

    _write_jsonl(paths["proof_pile_2"], [{"text": t, "meta": {"source": "generated"}} for t in math_documents()])
    _write_jsonl(paths["skypile"], [{"text": t} for t in chinese_documents()])
    return paths


def corpus_texts(paths: dict[str, Path]):
    """Every document of the demo corpus, as text (for tokenizer training)."""
    import pyarrow.parquet as pq

    for key in ("slimpajama", "proof_pile_2", "skypile"):
        with open(paths[key], encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]
    yield from pq.read_table(paths["starcoderdata"], columns=["content"]).column("content").to_pylist()


def train_tokenizer(texts, out_dir: Path, vocab_size: int = DEMO_VOCAB_SIZE, alphabet_size: int = 400) -> Path:
    """Train a Llama-style byte-fallback BPE tokenizer and save it as a ``PreTrainedTokenizerFast`` folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Like Llama-2's tokenizer.json: spaces become "▁" (prepended once), digits split, bytes as <0xNN>.
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("▁", behavior="merged_with_next"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    # The trainer breaks ties between equally frequent characters by hash order; choosing the alphabet here
    # (most frequent first, then by code point) keeps the build reproducible. Rarer characters use byte fallback.
    texts = list(texts)
    counts = collections.Counter()
    for t in texts:
        counts.update(t.replace(" ", "▁"))
    alphabet = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:alphabet_size]]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256, special_tokens=specials, show_progress=False,
        initial_alphabet=alphabet, limit_alphabet=len(alphabet),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Llama's layout: specials at 0-2, the 256 byte-fallback tokens <0x00>..<0xFF> at 3-258 (ordinary vocabulary,
    # not special tokens, so decoding keeps them), then the learned merges.
    trained = json.loads(tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    # The trainer orders its alphabet by a hash map; sorting it (then merges in merge order) makes ids reproducible.
    merged = [a + b for a, b in merges]
    alphabet = sorted(set(trained["vocab"]) - set(merged) - set(specials))
    for token in alphabet + merged:
        vocab.setdefault(token, len(vocab))
    tok.model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=2048, clean_up_tokenization_spaces=False,
    )
    with atomic_dir(out_dir) as tmp:
        fast.save_pretrained(tmp)
    return out_dir


def build_demo(out: str | Path = DEMO_DIR) -> dict[str, Path]:
    """Build (or reuse) the demo corpus and tokenizer under ``out``; return their paths."""
    out = Path(out)
    paths = build_corpus(out)
    tokenizer_dir = out / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
        log.info("training the demo tokenizer (vocab %d) on %s", DEMO_VOCAB_SIZE, out / "raw")
        train_tokenizer(corpus_texts(paths), tokenizer_dir)
    return {**paths, "tokenizer": tokenizer_dir}
