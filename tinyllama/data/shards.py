"""The on-disk format of a prepared source, its atomic writer and its memory-mapped reader.

```
<data_dir>/<source>/manifest.json             what was written, from what, how (see docs/data.md)
<data_dir>/<source>/train/shard-00000.bin     token ids, little-endian uint16 (uint32 if the vocab needs it)
<data_dir>/<source>/train/shard-00000.idx     start offset of each document in the shard, little-endian uint32
<data_dir>/<source>/validation/shard-00000.{bin,idx}
```
A shard holds whole documents and is written as ``.tmp-*`` files, fsynced, then renamed; the manifest (rewritten
atomically after each shard) lists the shards that are complete, so a killed run leaves nothing that looks whole.
Files that the manifest does not list are ignored by readers and replaced by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..utils import TMP_PREFIX, atomic_write_text

FORMAT = "tinyllama-packed-tokens/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")
INDEX_DTYPE = np.dtype("<u4")
MAX_SHARD_TOKENS = 2**32 - 1  # document offsets inside a shard are uint32


def shard_paths(folder: Path, split: str, k: int) -> tuple[Path, Path]:
    base = Path(folder) / split / f"shard-{k:05d}"
    return base.with_suffix(".bin"), base.with_suffix(".idx")


def read_manifest(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the folder is damaged: prepare it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a manifest of this format ({FORMAT})")
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def check_shards(folder: Path, manifest: dict, splits=SPLITS) -> None:
    """Every shard the manifest lists exists with the size it records; raise ValueError naming the file if not."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in splits:
        for k, entry in enumerate(manifest["splits"].get(split, [])):
            bin_path, idx_path = shard_paths(folder, split, k)
            for path, expected, what in ((bin_path, entry["tokens"] * itemsize, f"{entry['tokens']} tokens x "
                                          f"{manifest['dtype']}"),
                                         (idx_path, entry["documents"] * INDEX_DTYPE.itemsize,
                                          f"{entry['documents']} documents x uint32")):
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: missing, but {folder / MANIFEST} lists it; the prepared data "
                                            f"is damaged: prepare this source again (--overwrite true)")
                size = path.stat().st_size
                if size != expected:
                    raise ValueError(f"{path}: {size} bytes, but {folder / MANIFEST} says {expected} ({what}); the "
                                     f"prepared data is damaged or was changed: prepare this source again "
                                     f"(--overwrite true)")


class ShardWriter:
    """Append documents to the open shard of one split; ``close()`` makes it a complete, renamed shard."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, index: int):
        self.folder, self.split, self.dtype, self.index = Path(folder), split, np.dtype(dtype), index
        self._files = None
        self.tokens = 0
        self.documents = 0

    def _open(self):
        bin_path, idx_path = shard_paths(self.folder, self.split, self.index)
        bin_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = [p.parent / f"{TMP_PREFIX}{p.name}.{os.getpid()}" for p in (bin_path, idx_path)]
        self._files = ([open(t, "wb") for t in tmp], tmp, (bin_path, idx_path), hashlib.sha256())

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append whole documents: ``tokens`` (all of them, concatenated) and the length of each."""
        if len(lengths) == 0:
            return
        if self._files is None:
            self._open()
        (fbin, fidx), _, _, sha = self._files
        starts = np.empty(len(lengths), dtype=np.int64)
        starts[0] = self.tokens
        np.cumsum(lengths[:-1], out=starts[1:])
        starts[1:] += self.tokens
        if starts[-1] + lengths[-1] > MAX_SHARD_TOKENS:
            raise ValueError(f"shard {self.index} of {self.folder / self.split} would exceed {MAX_SHARD_TOKENS} "
                             f"tokens: lower shard_tokens")
        data = np.ascontiguousarray(tokens, dtype=self.dtype.newbyteorder("<"))
        fbin.write(memoryview(data).cast("B"))
        sha.update(memoryview(data).cast("B"))
        fidx.write(starts.astype(INDEX_DTYPE).tobytes())
        self.tokens += len(tokens)
        self.documents += len(lengths)

    def close(self) -> dict | None:
        """Finish the open shard (fsync, rename); return its manifest entry, or None if it holds nothing."""
        if self._files is None:
            return None
        files, tmp, final, sha = self._files
        for f in files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for t, p in zip(tmp, final):
            os.replace(t, p)
        entry = {"file": f"{self.split}/{final[0].name}", "tokens": self.tokens, "documents": self.documents,
                 "sha256": sha.hexdigest()}
        self._files = None
        self.index += 1
        self.tokens = self.documents = 0
        return entry

    def abort(self) -> None:
        if self._files is not None:
            files, tmp, _, _ = self._files
            for f, t in zip(files, tmp):
                f.close()
                t.unlink(missing_ok=True)
            self._files = None


def load_source(folder: str | os.PathLike, split: str) -> dict:
    """Read and check a prepared source's manifest for ``split``: it exists, it is complete, its shards match."""
    folder = Path(folder)
    if not folder.is_dir():
        parent = folder.parent
        found = sorted(p.name for p in parent.iterdir() if (p / MANIFEST).is_file()) if parent.is_dir() else []
        raise FileNotFoundError(f"{folder}: no prepared source here (prepared sources in {parent}: "
                                f"{', '.join(found) or 'none'}); run scripts/prepare_data.py for it first")
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder / MANIFEST}: not found; prepare this source with scripts/prepare_data.py")
    if not manifest.get("complete"):
        n = len(manifest["splits"].get("train", []))
        raise ValueError(f"{folder / MANIFEST}: preparation of '{folder.name}' is not finished ({n} train shard(s) "
                         f"so far); run the same prepare command again to finish it")
    if not manifest["splits"].get(split):
        raise ValueError(f"{folder / MANIFEST}: no '{split}' data in this source"
                         + (" (prepared with validation_documents: 0)" if split == "validation" else ""))
    check_shards(folder, manifest, splits=(split,))
    return manifest


class TokenStream:
    """The shards of one split of a prepared source as one token stream, memory-mapped on first use.

    Memory is a few arrays per shard, whatever the corpus size; pickling (DataLoader workers) drops the maps.
    """

    def __init__(self, folder: str | os.PathLike, split: str = "train"):
        self.folder, self.split = Path(folder), split
        self.manifest = load_source(self.folder, split)
        self.entries = self.manifest["splits"][split]
        self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.offsets = np.zeros(len(self.entries) + 1, dtype=np.int64)  # token offset of each shard in the stream
        np.cumsum([e["tokens"] for e in self.entries], out=self.offsets[1:])
        self.n_tokens = int(self.offsets[-1])
        self.n_documents = sum(e["documents"] for e in self.entries)
        self._maps: dict[int, tuple[np.memmap, np.memmap]] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    MAX_OPEN = 64  # shards kept mapped per process (each map holds a file descriptor; SlimPajama has thousands)

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        maps = self._maps.pop(k, None)
        if maps is None:
            bin_path, idx_path = shard_paths(self.folder, self.split, k)
            maps = (np.memmap(bin_path, dtype=self.dtype, mode="r"), np.memmap(idx_path, dtype=INDEX_DTYPE, mode="r"))
            if len(self._maps) >= self.MAX_OPEN:
                self._maps.pop(next(iter(self._maps)))  # the least recently used
        self._maps[k] = maps  # (re)inserted last: the dict's order is the recency order
        return maps

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens ``[start, stop)`` of the stream (as int64) and the offsets, relative to ``start``, of the
        documents that begin inside that range."""
        k = int(np.searchsorted(self.offsets, start, side="right")) - 1
        tokens, starts = [], []
        pos = start
        while pos < stop:
            base = int(self.offsets[k])
            tok, idx = self._shard(k)
            lo, hi = pos - base, min(stop, int(self.offsets[k + 1])) - base
            tokens.append(tok[lo:hi])
            a, b = np.searchsorted(idx, [lo, hi])
            if b > a:
                starts.append(idx[a:b].astype(np.int64) + (base - start))
            pos = base + hi
            k += 1
        out = tokens[0].astype(np.int64) if len(tokens) == 1 else np.concatenate(tokens).astype(np.int64)
        doc_starts = starts[0] if len(starts) == 1 else (np.concatenate(starts) if starts else np.empty(0, np.int64))
        return out, doc_starts
