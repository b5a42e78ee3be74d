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

The tokenizer is trained like Llama-2's: a SentencePiece byte-fallback BPE model (``<unk>``=0, ``<s>``=1, ``</s>``=2,
``▁`` for spaces) with Llama-2's trainer settings, then converted to a fast tokenizer that gives the same ids
(tinyllama/tokenizer.py); the folder holds both, ``tokenizer.model`` and ``tokenizer.json``, like a Llama-2 folder.
Real recipes name the Llama-2 tokenizer on the Hub instead.

``python scripts/build_demo.py [--out data/demo]`` builds it (deterministic; a rerun reuses what exists).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sysconfig
from pathlib import Path

from .utils import atomic_write_text, repo_root

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


def builtin_sample(max_per_kind: int | None = None) -> dict[str, list[str]]:
    """Texts that need no network, by kind, to measure a tokenizer on (scripts/convert_tokenizer.py,
    scripts/tokenizer_fidelity.py): ``code`` (this Python's standard-library modules), ``prose`` (its reference
    manual's topics), ``chinese`` and ``math`` (the demo corpus's), ``edge cases`` (``tokenizer.EDGE_CASES``)."""
    from .tokenizer import EDGE_CASES

    lib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(lib.glob("*.py"))]
    kinds = {"code": code, "prose": prose_documents(), "chinese": chinese_documents(300), "math": math_documents(300),
             "edge cases": list(EDGE_CASES)}
    return {k: v[:max_per_kind] for k, v in kinds.items()}


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


def corpus_texts(paths: dict[str, Path], sources=("slimpajama", "proof_pile_2", "skypile", "starcoderdata")):
    """Every document of the demo corpus (of ``sources``, in that order), as text: for tokenizer training, and for
    prompts and samples drawn from the corpus."""
    import pyarrow.parquet as pq

    for key in sources:
        if key == "starcoderdata":  # parquet, like the real Starcoderdata
            yield from pq.read_table(paths[key], columns=["content"]).column("content").to_pylist()
            continue
        with open(paths[key], encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]


def train_tokenizer(texts, out_dir: Path, vocab_size: int = DEMO_VOCAB_SIZE) -> Path:
    """Train a SentencePiece BPE model with Llama-2's trainer settings and save it, with its SentencePiece-exact fast
    tokenizer (:func:`tinyllama.tokenizer.save_tokenizer_folder`), as a tokenizer folder.

    The settings are those in the ``trainer_spec`` of Llama-2's ``tokenizer.model``: BPE, byte fallback, digits
    split, identity normalization, a dummy prefix, whitespace-only pieces allowed, spaces kept as they are,
    ``<unk>``/``<s>``/``</s>`` = 0/1/2, no pad. SentencePiece trains on sentences: the texts' non-blank lines (Llama-2's
    vocabulary has no newline piece either: '\n' is the byte token <0x0A>). One thread and no sampling keep the
    model byte-identical on a rebuild (two threads gave another model).
    """
    import io
    import tempfile

    import sentencepiece as spm

    from .tokenizer import save_tokenizer_folder

    lines = [line for t in texts for line in t.split("\n") if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, character_coverage=0.99995,
        max_sentencepiece_length=16, split_by_unicode_script=True, split_by_whitespace=True, split_by_number=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
        max_sentence_length=16384, minloglevel=2)
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "tokenizer.model"
        model_file.write_bytes(model.getvalue())
        return save_tokenizer_folder(model_file, out_dir, model_max_length=2048)


def build_demo(out: str | Path = DEMO_DIR) -> dict[str, Path]:
    """Build (or reuse) the demo corpus and tokenizer under ``out``; return their paths."""
    out = Path(out)
    paths = build_corpus(out)
    tokenizer_dir = out / "tokenizer"
    if (tokenizer_dir / "tokenizer.json").exists() and not (tokenizer_dir / "tokenizer.model").exists():
        # a demo folder from before the demo tokenizer was SentencePiece-trained: train it again, and drop what was
        # built with the old one (preparation would refuse shards of another tokenizer; the chat base model)
        for stale in (out / "tokenized", out / "chat" / "base"):
            if stale.exists():
                log.warning("removing %s: built with the previous demo tokenizer (rebuilt on first use)", stale)
                shutil.rmtree(stale)
    if not all((tokenizer_dir / name).exists() for name in ("tokenizer.json", "tokenizer.model")):
        log.info("training the demo tokenizer (vocab %d) on %s", DEMO_VOCAB_SIZE, out / "raw")
        train_tokenizer(corpus_texts(paths), tokenizer_dir)
    return {**paths, "tokenizer": tokenizer_dir}
