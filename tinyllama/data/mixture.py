"""The training-side view of prepared shards: a weighted (and ramped) mixture of sources, indexed by sample.

Sample ``i`` of the global stream is a pure function of ``(seed, i)`` (given the data and the mixture):

1. **Which source.** The stream is cut into blocks of about ``BLOCK`` samples. Each source's cumulative number of
   picks before block ``b`` is ``round(T_j(b))``, where ``T_j(b) = BLOCK x sum over earlier blocks of the source's
   normalised weight at that block's token position`` (token position = sample index x seq_len); block ``b`` holds
   the picks between two such boundaries, in a seeded random order. So at every block boundary each source is
   within half a sample of its exact target share, ramps included, and both the source of sample ``i`` and the
   number ``k`` of earlier picks of that source come out in O(1) (a prefix sum over the ramp's blocks is cached;
   after the last ramp the weights are constant and the sum is closed-form).
2. **Which tokens.** Source ``j``'s token stream (its shards, concatenated) is cut into ``n_j = (N_j - 1) //
   seq_len`` samples of ``seq_len + 1`` tokens with stride ``seq_len``: consecutive samples share one token, so
   every token is a prediction target exactly once per epoch (the last ``(N_j - 1) mod seq_len`` tokens, less than
   one sample, are not used). The ``k``-th pick of source ``j`` is sample ``perm_e(k mod n_j)`` of epoch
   ``e = k // n_j``, where ``perm_e`` is a fresh pseudo-random permutation per (seed, source, epoch).

No sample is ever padded: there are no partially filled tails. Resuming at step N needs no replay, and the
pretraining loop splits the global indices of a step among ranks with ``DistributedStepSampler``.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .shards import TokenStream


@dataclass
class SourceWeight:
    """One entry of a mixture."""

    name: str  # source name = sub-folder under data_dir
    weight: float  # target weight (relative; normalised across sources at every point)
    start_weight: float | None = None  # if set, the weight ramps linearly from start_weight to weight ...
    ramp_tokens: float = 0  # ... over the first ramp_tokens tokens of the stream (position = sample index x seq_len)

    def at(self, tokens: np.ndarray) -> np.ndarray:
        """The (unnormalised) weight at token positions ``tokens``."""
        if self.start_weight is None or self.ramp_tokens <= 0:
            return np.full(np.shape(tokens), float(self.weight))
        frac = np.minimum(np.asarray(tokens, dtype=np.float64) / float(self.ramp_tokens), 1.0)
        return self.start_weight + (self.weight - self.start_weight) * frac


def _number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def check_mixture(mixture: list[SourceWeight]) -> list[str]:
    """Every problem with a mixture, as messages."""
    errors = []
    if not mixture:
        return ["mixture: no sources"]
    names = [m.name for m in mixture]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"mixture: source '{name}' appears more than once")
    for m in mixture:
        if not _number(m.weight) or m.weight < 0:
            errors.append(f"mixture.{m.name}.weight: must be a number >= 0, got {m.weight!r}")
        if m.start_weight is not None and (not _number(m.start_weight) or m.start_weight < 0):
            errors.append(f"mixture.{m.name}.start_weight: must be a number >= 0, got {m.start_weight!r}")
        if not _number(m.ramp_tokens) or m.ramp_tokens < 0:
            errors.append(f"mixture.{m.name}.ramp_tokens: must be a number >= 0, got {m.ramp_tokens!r}")
        elif m.start_weight is not None and m.ramp_tokens == 0:
            errors.append(f"mixture.{m.name}: start_weight needs ramp_tokens > 0 (the length of the ramp)")
    if errors:
        return errors
    # The total weight is piecewise linear in the token position, with kinks only at the ends of the ramps:
    # positive there and at 0 means positive everywhere.
    points = sorted({0.0} | {float(m.ramp_tokens) for m in mixture if m.start_weight is not None})
    for t in points:
        total = float(sum(m.at(np.array(t)) for m in mixture))
        if not total > 0:
            errors.append(f"mixture: the weights sum to {total:g} at token {t:g}; they must sum to a positive number")
            break
    return errors


def parse_mixture(spec: dict) -> list[SourceWeight]:
    """``{"a": 0.7, "b": 0.3}`` or ``{"a": {"weight": 0.75, "start_weight": 1.0, "ramp_tokens": 6e9}, ...}``.

    Raises ValueError naming every problem (negative weights, sum not positive, unknown keys).
    """
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"mixture: expected a mapping of source name to weight, got {spec!r}")
    mixture, errors = [], []
    for name, value in spec.items():
        if isinstance(value, dict):
            unknown = set(value) - {"weight", "start_weight", "ramp_tokens"}
            if unknown:
                errors.append(f"mixture.{name}: unknown key(s) {sorted(unknown)} (known: weight, start_weight, "
                              f"ramp_tokens)")
            if "weight" not in value:
                errors.append(f"mixture.{name}: 'weight' is required")
                continue
            values = {k: _to_float(value[k]) for k in ("weight", "start_weight", "ramp_tokens") if k in value}
            mixture.append(SourceWeight(str(name), values["weight"], values.get("start_weight"),
                                        values.get("ramp_tokens", 0)))
        else:
            mixture.append(SourceWeight(str(name), _to_float(value)))
    errors += check_mixture(mixture)
    if errors:
        raise ValueError("invalid mixture:\n" + "\n".join(f"  - {e}" for e in errors))
    return mixture


def _to_float(x):
    if isinstance(x, str):  # YAML reads 6e9 as a string
        try:
            return float(x)
        except ValueError:
            return x
    return x


# ---- the source schedule ---------------------------------------------------------------------------------------
class _Schedule:
    """How many picks of each source precede block ``b``; O(1) per query (see the module docstring)."""

    def __init__(self, mixture: list[SourceWeight], seq_len: int, block: int):
        self.block = block
        block_tokens = float(block) * seq_len
        ramp_end = max([m.ramp_tokens for m in mixture if m.start_weight is not None] or [0.0])
        self.ramp_blocks = int(math.ceil(ramp_end / block_tokens)) + 1
        mids = (np.arange(self.ramp_blocks) + 0.5) * block_tokens
        probs = self._probs(mixture, mids)
        self.prefix = np.zeros((self.ramp_blocks + 1, len(mixture)))
        np.cumsum(probs, axis=0, out=self.prefix[1:])
        self.final = self._probs(mixture, np.array([math.inf if ramp_end else 0.0]))[0]

    @staticmethod
    def _probs(mixture, tokens: np.ndarray) -> np.ndarray:
        w = np.stack([m.at(np.minimum(tokens, 1e300)) for m in mixture], axis=1)
        return w / w.sum(axis=1, keepdims=True)

    def counts(self, b: int) -> np.ndarray:
        """Picks of each source in blocks ``[0, b)`` (int64, monotone in ``b``)."""
        if b <= self.ramp_blocks:
            target = self.prefix[b] * self.block
        else:
            target = (self.prefix[self.ramp_blocks] + (b - self.ramp_blocks) * self.final) * self.block
        return np.floor(target + 0.5).astype(np.int64)

    def start(self, b: int) -> int:
        return int(self.counts(b).sum())


class _Permutation:
    """A pseudo-random bijection of ``[0, n)`` in O(1) memory: a 6-round Feistel network on the smallest even
    number of bits that covers ``n``, with cycle walking. Written here because numpy's ``permutation`` would hold
    ``n`` int64s per source and epoch (2.4 GB for SlimPajama's 300M samples) in every dataloader worker."""

    ROUNDS = 6
    M64 = (1 << 64) - 1

    def __init__(self, n: int, key: int):
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits & 1
        self.half, self.mask = bits // 2, (1 << (bits // 2)) - 1
        self.keys = [self._mix(key + r * 0x9E3779B97F4A7C15) for r in range(self.ROUNDS)]

    @classmethod
    def _mix(cls, x: int) -> int:  # splitmix64's finaliser
        x &= cls.M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & cls.M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & cls.M64
        return x ^ (x >> 31)

    def __call__(self, x: int) -> int:
        half, mask, mix = self.half, self.mask, self._mix
        while True:  # cycle walking: stays a bijection of [0, n); expected < 4 rounds since 4^half < 4n
            left, right = x >> half, x & mask
            for k in self.keys:
                left, right = right, left ^ (mix(right ^ k) & mask)
            x = (left << half) | right
            if x < self.n:
                return x


def _key(*parts) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def _position_ids(length: int, doc_starts: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... restarting at 0 at each document start (the sample's first token also counts as a start)."""
    marker = np.zeros(length, dtype=np.int64)
    marker[doc_starts] = doc_starts
    np.maximum.accumulate(marker, out=marker)
    return np.arange(length, dtype=np.int64) - marker


def _open_streams(data_dir, names: list[str], split: str) -> list[TokenStream]:
    """Open every source, reporting every problem at once; all must share one tokenizer."""
    data_dir = Path(data_dir)
    streams, errors, missing = [], [], []
    for name in names:
        try:
            streams.append(TokenStream(data_dir / name, split))
        except FileNotFoundError as e:
            missing.append(str(e))
        except ValueError as e:
            errors.append(str(e))
    if missing or errors:
        msg = "\n".join(f"  - {e}" for e in missing + errors)
        raise (FileNotFoundError if missing and not errors else ValueError)(f"cannot read {data_dir}:\n{msg}")
    hashes = {s.manifest["tokenizer"]["hash"] for s in streams}
    if len(hashes) > 1:
        lines = "\n".join(f"  - {n}: {s.manifest['tokenizer']['name']} ({s.manifest['tokenizer']['hash'][:12]})"
                          for n, s in zip(names, streams))
        raise ValueError(f"{data_dir}: the sources were tokenized with different tokenizers:\n{lines}")
    return streams


class MixtureDataset(torch.utils.data.Dataset):
    """Samples of ``seq_len + 1`` tokens drawn from weighted sources; ``dataset[i]`` is a pure function of i.

    Items: ``{"input_ids": LongTensor[seq_len+1], "position_ids": LongTensor[seq_len+1], "source": int}``.
    Inputs are ``input_ids[:-1]`` and labels ``input_ids[1:]``; ``position_ids`` restart at each document start,
    for document masking with padding-free attention (use ``position_ids[:-1]``).
    """

    BLOCK = 1024
    LENGTH = 2**62  # the stream is infinite in practice: each source repeats with a new order per epoch

    def __init__(self, data_dir: str | Path, mixture: list[SourceWeight], seq_len: int, seed: int = 3407,
                 split: str = "train"):
        errors = check_mixture(list(mixture))
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            errors.append(f"seq_len: must be a positive integer, got {seq_len!r}")
        if errors:
            raise ValueError("invalid mixture:\n" + "\n".join(f"  - {e}" for e in errors))
        self.mixture, self.seq_len, self.seed, self.split = list(mixture), seq_len, int(seed), split
        self.source_names = [m.name for m in self.mixture]
        self.streams = _open_streams(data_dir, self.source_names, split)
        self.samples_per_epoch = [(s.n_tokens - 1) // seq_len for s in self.streams]
        short = [f"{n}: {s.n_tokens} tokens" for n, s, k in zip(self.source_names, self.streams,
                                                                  self.samples_per_epoch) if k < 1]
        if short:
            raise ValueError(f"{data_dir}: sources with fewer than seq_len + 1 = {seq_len + 1} tokens in '{split}': "
                             + ", ".join(short))
        first = self.streams[0].manifest["tokenizer"]
        self.tokenizer_hash: str = first["hash"]
        self.vocab_size: int = first["vocab_size"]
        self.tokenizer_name: str = first["name"]
        self._schedule = _Schedule(self.mixture, seq_len, self.BLOCK)
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._perms: dict[tuple[int, int], _Permutation] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_blocks"], state["_perms"] = {}, {}
        return state

    def __len__(self) -> int:
        return self.LENGTH

    # -- which source, which pick --
    def _locate(self, i: int) -> tuple[int, int]:
        sched = self._schedule
        b = i // self.BLOCK
        while sched.start(b) > i:
            b -= 1
        while sched.start(b + 1) <= i:
            b += 1
        return b, i - sched.start(b)

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each sample in block b, the number of earlier picks of that source in the whole stream)."""
        cached = self._blocks.get(b)
        if cached is not None:
            return cached
        before, after = self._schedule.counts(b), self._schedule.counts(b + 1)
        picks = np.repeat(np.arange(len(before)), after - before)
        source = picks[np.random.default_rng([self.seed, b]).permutation(len(picks))]
        k = np.empty(len(source), dtype=np.int64)
        for j in range(len(before)):
            where = np.flatnonzero(source == j)
            k[where] = before[j] + np.arange(len(where))
        if len(self._blocks) >= 8:
            self._blocks.pop(next(iter(self._blocks)))
        self._blocks[b] = (source, k)
        return source, k

    def pick(self, i: int) -> tuple[int, int, int]:
        """``(source index, k = earlier picks of that source, sample number within the source's epoch)``."""
        if i < 0:
            raise IndexError(f"sample index must be >= 0, got {i}")
        b, r = self._locate(i)
        source, k = self._block(b)
        j, kk = int(source[r]), int(k[r])
        n = self.samples_per_epoch[j]
        epoch, within = divmod(kk, n)
        perm = self._perms.get((j, epoch))
        if perm is None:
            if len(self._perms) >= 64:
                self._perms.pop(next(iter(self._perms)))
            perm = self._perms[(j, epoch)] = _Permutation(n, _key(self.seed, self.source_names[j], epoch))
        return j, kk, perm(within)

    def __getitem__(self, i: int) -> dict:
        j, _, sample = self.pick(int(i))
        start = sample * self.seq_len
        tokens, doc_starts = self.streams[j].read(start, start + self.seq_len + 1)
        return {"input_ids": torch.from_numpy(tokens),
                "position_ids": torch.from_numpy(_position_ids(len(tokens), doc_starts)),
                "source": j}

    def source_counts(self, start: int, stop: int) -> np.ndarray:
        """How many of the samples ``[start, stop)`` come from each source (int64 array, one per source)."""
        return self._counts_before(stop) - self._counts_before(start)

    def _counts_before(self, i: int) -> np.ndarray:
        b, r = self._locate(i)
        source, _ = self._block(b)
        return self._schedule.counts(b) + np.bincount(source[:r], minlength=len(self.mixture))

    def weights_at(self, i: int) -> np.ndarray:
        """The configured (normalised) weights at sample ``i``."""
        return _Schedule._probs(self.mixture, np.array([float(i) * self.seq_len]))[0]


class SequentialDataset(torch.utils.data.Dataset):
    """The held-out split: consecutive samples of each named source in turn (same item format, deterministic)."""

    def __init__(self, data_dir: str | Path, names: list[str], seq_len: int, split: str = "validation"):
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len: must be a positive integer, got {seq_len!r}")
        if not names:
            raise ValueError("validation_dataset: name at least one source")
        self.source_names, self.seq_len = list(names), seq_len
        self.streams = _open_streams(data_dir, self.source_names, split)
        counts = [(s.n_tokens - 1) // seq_len for s in self.streams]
        short = [f"{n}: {s.n_tokens} tokens" for n, s, c in zip(names, self.streams, counts) if c < 1]
        if short:
            raise ValueError(f"{data_dir}: '{split}' splits shorter than seq_len + 1 = {seq_len + 1} tokens ("
                             + ", ".join(short) + "); prepare with more validation_documents or use a shorter seq_len")
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.tokenizer_hash = self.streams[0].manifest["tokenizer"]["hash"]
        self.vocab_size = self.streams[0].manifest["tokenizer"]["vocab_size"]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} validation samples")
        j = int(np.searchsorted(self.offsets, i, side="right")) - 1
        start = (int(i) - int(self.offsets[j])) * self.seq_len
        tokens, doc_starts = self.streams[j].read(start, start + self.seq_len + 1)
        return {"input_ids": torch.from_numpy(tokens),
                "position_ids": torch.from_numpy(_position_ids(len(tokens), doc_starts)), "source": j}


def validation_dataset(data_dir: str | Path, names: list[str], seq_len: int) -> SequentialDataset:
    """The held-out split of every named source, as consecutive samples (see ``SequentialDataset``)."""
    return SequentialDataset(data_dir, names, seq_len)


class DistributedStepSampler(torch.utils.data.Sampler):
    """Global sample indices for one rank, forever: step ``s`` covers ``[start_index + s x samples_per_step, ...)``
    and rank ``r`` takes its contiguous slice of ``samples_per_step // world_size`` indices of each step.

    Ranks never share an index; with ``DataLoader(num_workers > 0)`` each worker receives whole batches, so workers
    never share one either. Rebuild it (``start_index`` = samples consumed so far) when the batch size changes.
    """

    def __init__(self, start_index: int, samples_per_step: int, rank: int, world_size: int):
        errors = []
        if start_index < 0:
            errors.append(f"start_index must be >= 0, got {start_index}")
        if world_size < 1 or not 0 <= rank < world_size:
            errors.append(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        elif samples_per_step < 1 or samples_per_step % world_size:
            errors.append(f"samples_per_step ({samples_per_step}) must be a positive multiple of world_size "
                          f"({world_size})")
        if errors:
            raise ValueError("DistributedStepSampler: " + "; ".join(errors))
        self.start_index, self.samples_per_step = int(start_index), int(samples_per_step)
        self.rank, self.world_size = int(rank), int(world_size)
        self.per_rank = self.samples_per_step // self.world_size

    def __iter__(self) -> Iterator[int]:
        base = self.start_index + self.rank * self.per_rank
        while True:
            yield from range(base, base + self.per_rank)
            base += self.samples_per_step
