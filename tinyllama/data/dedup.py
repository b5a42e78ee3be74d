"""Deduplication during preparation: exact duplicates by a hash of the normalised text, near duplicates by MinHash
LSH over word n-grams. Each source is deduplicated within itself; the first occurrence (in input order) is kept.

Two halves, so that the expensive half runs in the tokenizer worker processes and the decision stays in input order
(the same kept set whatever the number of workers):

- ``Deduplicator.keys(text)`` (workers): the document's exact key and its LSH band keys, 64-bit integers. The MinHash
  signature is datasketch's (``MinHash``, scheme ``affine64``, seeded permutations) over the set of the document's
  word n-gram hashes (``ngrams.py``: the normalisation lm-eval's decontamination uses); the bands and rows per band
  are datasketch's ``MinHashLSH`` choice for the threshold (it minimises the false positive + false negative
  probability). A band key is BLAKE2b of (band number, the band's hash values).
- ``DedupIndex`` (main process): the keys and signatures of every kept document in an SQLite file beside the
  manifest. A document is an exact duplicate if its exact key is there; a near duplicate if one of its bands
  collides with a kept document's (an LSH candidate) *and* the two signatures agree on at least ``threshold`` of
  their values (the MinHash estimate of their Jaccard similarity). The check removes the candidates that banding
  lets through well below the threshold (short documents sharing a template collide often); it costs
  ``4 x num_perm`` bytes of disk per kept document.

Why datasketch plus SQLite rather than datatrove's MinHash pipeline or datasketch's own ``MinHashLSH`` index:
``MinHashLSH`` keeps its index in memory (or Redis/Cassandra servers), and the issue is a corpus larger than RAM
on a machine with no server; datatrove's pipeline is four passes over its own readers and writers (signatures,
buckets, clusters, filter), which would read every corpus twice and bypass the resumable reader of this package.
SQLite (standard library) keeps the index on disk with bounded memory, and its transactions commit together with
the manifest's shards, so a killed run resumes with exactly the index of its last committed shard.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import optional_step
from .ngrams import ngram_hashes, normalize, word_hashes

log = logging.getLogger(__name__)
INDEX_FILE = "dedup.sqlite"
_CHUNK = 4096  # shingles per MinHash update: bounds memory (chunk x num_perm x 8 bytes) for very long documents


@dataclass(frozen=True)
class DedupSettings:
    """``dedup:`` in a data config (see docs/data.md)."""

    exact: bool = True  # drop a document whose normalised text equals an earlier one's
    near: bool = True  # drop a document whose MinHash LSH bands collide with an earlier one's
    threshold: float = 0.8  # Jaccard similarity of word n-gram sets aimed at (sets the bands and rows)
    ngram: int = 5  # words per shingle
    num_perm: int = 128  # MinHash permutations (signature length)
    seed: int = 1  # MinHash permutation seed

    @classmethod
    def parse(cls, where: str, value, errors: list[str]) -> "DedupSettings | None":
        """``true`` (defaults), ``false``/absent (None: off), or a mapping of the fields; every problem appended to
        ``errors``. Keys and types are checked by the config parser, the ranges here."""
        n = len(errors)
        values = optional_step(cls, value, where, errors)
        if values is None:
            return None
        s = cls(**values)
        if not 0 < s.threshold < 1:
            errors.append(f"'threshold' in {where}: expected a number between 0 and 1 (exclusive), got {s.threshold!r}")
        for k, lo in (("ngram", 1), ("num_perm", 2), ("seed", 0)):
            if getattr(s, k) < lo:
                errors.append(f"'{k}' in {where}: expected an integer >= {lo}, got {getattr(s, k)!r}")
        if len(errors) > n or not (s.exact or s.near):
            return None
        return s

    def to_dict(self) -> dict:
        return asdict(self)

    def bands(self) -> tuple[int, int]:
        """(bands, rows per band): datasketch's choice for the threshold and number of permutations."""
        return _bands(self.threshold, self.num_perm)


_BANDS: dict = {}


def _bands(threshold: float, num_perm: int) -> tuple[int, int]:
    if (threshold, num_perm) not in _BANDS:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        _BANDS[threshold, num_perm] = (lsh.b, lsh.r)
    return _BANDS[threshold, num_perm]


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two documents of this Jaccard similarity share a band (the LSH S-curve)."""
    return 1 - (1 - similarity ** rows) ** bands


def _key(data: bytes) -> int:
    """A signed 64-bit key (SQLite's INTEGER) from bytes."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


class Deduplicator:
    """Computes a document's dedup keys (worker side): ``(exact key or None, band keys, signature as bytes)``."""

    def __init__(self, settings: DedupSettings, bands: tuple[int, int] | None = None):
        from datasketch import MinHash

        self.settings = settings
        self.b, self.r = bands or settings.bands()
        self._proto = MinHash(num_perm=settings.num_perm, seed=settings.seed, scheme="affine64",
                              hashfunc=_identity)

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        """The MinHash signature of the set of word n-grams of a document whose word hashes are ``hashes``
        (``ngrams.word_hashes``); a document shorter than n words is one shingle, its whole text."""
        shingles = ngram_hashes(hashes, self.settings.ngram)
        if len(shingles) == 0:
            shingles = ngram_hashes(hashes, max(len(hashes), 1)) if len(hashes) else np.zeros(1, np.uint64)
        shingles = np.unique(shingles)
        m = self._proto.copy()
        for i in range(0, len(shingles), _CHUNK):
            m.update_batch(shingles[i:i + _CHUNK].tolist())
        return m.hashvalues

    def keys(self, text: str) -> tuple[int | None, list[int], bytes]:
        normalized = normalize(text)
        return self.keys_from(normalized, word_hashes(normalized.split()) if self.settings.near else None)

    def keys_from(self, normalized: str, hashes: np.ndarray | None) -> tuple[int | None, list[int], bytes]:
        """``keys`` from the normalised text and its word hashes (computed once when decontamination needs them
        too)."""
        exact = _key(normalized.encode("utf-8")) if self.settings.exact else None
        if not self.settings.near:
            return exact, [], b""
        sig = self.signature(hashes)
        bands = [_key(i.to_bytes(2, "little") + sig[i * self.r:(i + 1) * self.r].tobytes()) for i in range(self.b)]
        # 32 bits of each value are enough to compare signatures (a chance agreement is 2**-32 per value)
        return exact, bands, sig.astype(np.uint32).tobytes()


def _identity(x):
    return x


def similarity(sig_a: bytes, sig_b: bytes) -> float:
    """The MinHash estimate of the Jaccard similarity: the share of equal signature values."""
    return float(np.mean(np.frombuffer(sig_a, np.uint32) == np.frombuffer(sig_b, np.uint32)))


_TABLES = ("exact", "band", "sig")


class DedupIndex:
    """The keys and signatures of every kept document of one source, in ``<source folder>/dedup.sqlite``.

    ``screen`` decides a batch in input order and adds the kept documents; ``commit(rows)`` makes the additions
    durable together with the count of rows read; ``open`` rolls back anything a killed run committed past the
    manifest's position. Memory: SQLite's page cache (at most 256 MiB), whatever the size of the index.
    """

    def __init__(self, path: Path, settings: DedupSettings):
        self.path = Path(path)
        self.settings = settings
        self.db = sqlite3.connect(self.path, isolation_level="DEFERRED")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut: it goes with a manifest write
        self.db.execute("PRAGMA cache_size=-262144")  # at most 256 MiB of pages in memory
        self.db.execute("CREATE TABLE IF NOT EXISTS exact (key INTEGER PRIMARY KEY, row INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS band (key INTEGER NOT NULL, row INTEGER NOT NULL, "
                        "PRIMARY KEY (key, row)) WITHOUT ROWID")
        self.db.execute("CREATE TABLE IF NOT EXISTS sig (row INTEGER PRIMARY KEY, sig BLOB NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value)")
        self.db.commit()

    @classmethod
    def open(cls, folder: Path, settings: DedupSettings, rows_committed: int) -> "DedupIndex":
        """Open (or create) the index of a source whose manifest has read ``rows_committed`` rows."""
        index = cls(Path(folder) / INDEX_FILE, settings)
        stored = index._meta("settings")
        if stored is not None and stored != repr(settings.to_dict()):
            raise ValueError(f"{index.path}: built with other dedup settings ({stored}); prepare this source again "
                             f"with --overwrite true")
        rows = int(index._meta("rows") or 0)
        if rows > rows_committed:
            # killed between this commit and the manifest's: forget what the manifest does not have (a full scan,
            # only on this rare path)
            log.info("%s: rolling back %d rows read after the last committed shard", index.path,
                     rows - rows_committed)
            for table in _TABLES:
                index.db.execute(f"DELETE FROM {table} WHERE row >= ?", (rows_committed,))
            index.commit(rows_committed)
        elif rows < rows_committed:
            raise ValueError(f"{index.path}: covers {rows} rows but the manifest has read {rows_committed}; the "
                             f"index is missing or damaged: prepare this source again with --overwrite true")
        if stored is None:
            index.db.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)", (repr(settings.to_dict()),))
            index.commit(rows_committed)
        return index

    def _meta(self, name: str):
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def _select(self, query: str, values: list) -> list[tuple]:
        out: list[tuple] = []
        values = list(dict.fromkeys(values))
        for i in range(0, len(values), 30000):  # under SQLite's limit on bound parameters
            chunk = values[i:i + 30000]
            out += self.db.execute(query.format(",".join("?" * len(chunk))), chunk).fetchall()
        return out

    def screen(self, keys: list[tuple], rows: list[int], verdicts: list[str | None]) -> list[str | None]:
        """Decide a batch of documents in order. ``keys``: ``Deduplicator.keys`` per document; ``rows``: their row
        numbers; ``verdicts``: None, or the reason an earlier check drops the document (it is then left out of the
        index). Returns the verdicts with "duplicate" / "near duplicate" set, and adds the documents kept."""
        s = self.settings
        exact_seen = ({k for (k,) in self._select("SELECT key FROM exact WHERE key IN ({})",
                                                  [k[0] for k in keys])} if s.exact else set())
        band_rows: dict[int, list[int]] = {}
        sigs: dict[int, bytes] = {}
        if s.near:
            for key, row in self._select("SELECT key, row FROM band WHERE key IN ({})", [b for k in keys for b in k[1]]):
                band_rows.setdefault(key, []).append(row)
            sigs = dict(self._select("SELECT row, sig FROM sig WHERE row IN ({})",
                                     [r for rs in band_rows.values() for r in rs]))
        out = list(verdicts)
        new_exact, new_band, new_sig = [], [], []
        for i, ((exact, bands, sig), row) in enumerate(zip(keys, rows)):
            if out[i] is not None:
                continue
            if s.exact and exact in exact_seen:
                out[i] = "duplicate"
                continue
            if s.near:
                candidates = dict.fromkeys(r for b in bands for r in band_rows.get(b, ()))
                if any(similarity(sig, sigs[r]) >= s.threshold for r in candidates):
                    out[i] = "near duplicate"
                    continue
            if s.exact:
                exact_seen.add(exact)
                new_exact.append((exact, row))
            if s.near:
                for b in dict.fromkeys(bands):
                    band_rows.setdefault(b, []).append(row)
                    new_band.append((b, row))
                sigs[row] = sig
                new_sig.append((row, sig))
        self.db.executemany("INSERT OR IGNORE INTO exact VALUES (?, ?)", new_exact)
        self.db.executemany("INSERT OR IGNORE INTO band VALUES (?, ?)", new_band)
        self.db.executemany("INSERT OR IGNORE INTO sig VALUES (?, ?)", new_sig)
        return out

    def commit(self, rows: int) -> None:
        """Make the additions so far durable, recording that they cover the first ``rows`` rows of the source."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('rows', ?)", (rows,))
        self.db.commit()

    def close(self) -> None:
        self.db.rollback()  # anything not committed with a shard is redone by the next run
        self.db.close()
