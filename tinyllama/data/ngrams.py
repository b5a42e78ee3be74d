"""Word n-grams as 64-bit hashes: the common ground of deduplication (``dedup.py``) and decontamination
(``decontaminate.py``).

Text is normalised the way the GPT-3 paper and lm-eval's decontamination (``lm_eval/decontamination/janitor.py``)
do it: lower case, punctuation deleted, split on white space; so a benchmark item pasted with other capitalisation,
quotes or line breaks still matches. (We do not import the janitor: without its optional C++ helper it prints a
traceback at import, in every worker process.) Unicode is NFKC-normalised first, so full-width and composed forms
compare equal. Characters of scripts written without spaces (Chinese, Japanese, Korean) count as one word each.

A word's hash is the first 8 bytes of its BLAKE2b digest (stable across processes and machines, unlike Python's
salted ``hash``); an n-gram's hash is a polynomial combination of its words' hashes modulo 2**64, computed for a
whole document at once with numpy.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

_PRIME = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime: odd, so the combination is a bijection per position
_NON_WORD = re.compile(r"[^\w\s]+|_+")  # punctuation and symbols (unicode-aware); \w keeps letters, digits, CJK
_CACHE_MAX = 1 << 20
# Scripts written without spaces between words (Chinese, Japanese kana, Korean syllables): each character counts as
# a word, so that n-grams exist at all for them (SkyPile is Chinese).
_NO_SPACES = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation deleted (as lm-eval's janitor does: "don't" -> "dont"), white space
    collapsed to single spaces; a character of a script written without spaces (CJK) is a word of its own."""
    text = _NON_WORD.sub("", unicodedata.normalize("NFKC", text).lower())
    return " ".join(_NO_SPACES.sub(r" \g<0> ", text).split())


def words(text: str) -> list[str]:
    return normalize(text).split()


_word_cache: dict[str, int] = {}


def word_hashes(ws: list[str]) -> np.ndarray:
    """uint64 hash of each word (cached per process: word frequencies are Zipfian)."""
    cache = _word_cache
    out = np.empty(len(ws), dtype=np.uint64)
    for i, w in enumerate(ws):
        h = cache.get(w)
        if h is None:
            h = int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[w] = h
        out[i] = h
    return out


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every run of ``n`` consecutive words (``len(hashes) - n + 1`` of them; none if shorter)."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):  # acc = h[i] * P^(n-1) + h[i+1] * P^(n-2) + ... + h[i+n-1]   (mod 2**64)
            acc = acc * _PRIME + hashes[k:k + count]
    return acc


def text_ngrams(text: str, n: int) -> np.ndarray:
    """The n-gram hashes of a text after ``normalize``."""
    return ngram_hashes(word_hashes(words(text)), n)
