"""The training-side datasets over prepared shards: mixture proportions and ramps, purity in the sample index,
resume, rank/worker splitting, epochs, document position ids, and the checks on the prepared folders."""

import itertools
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyllama.data import (DistributedStepSampler, MixtureDataset, SourceWeight, parse_mixture, prepare_data,
                            validation_dataset)
from tinyllama.data.mixture import _Permutation

REPO = Path(__file__).resolve().parent.parent
SEQ = 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, demo_paths):
    """The four demo sources, prepared with small shards (so samples cross shard boundaries)."""
    out = tmp_path_factory.mktemp("tok") / "data"
    prepare_data(["--config", str(REPO / "configs/data/demo.yaml"), "--output_dir", str(out), "--num_workers", "0",
                  "--shard_tokens", "30000", "--batch_bytes", "20000", "--build_demo", ""] + _demo_paths(demo_paths))
    return out


def _demo_paths(demo_paths):
    raw = demo_paths["slimpajama"].parents[1]
    return ["--sources", json.dumps({
        "slimpajama": {"path": str(demo_paths["slimpajama"]),
                       "filters": [{"field": "meta.redpajama_set_name", "not_in": ["RedPajamaGithub"]}]},
        "starcoderdata": {"path": str(raw / "starcoderdata"), "text_field": "content"},
        "proof_pile_2": {"path": str(demo_paths["proof_pile_2"])},
        "skypile": {"path": str(demo_paths["skypile"])}})]


def _stream(folder: Path, split="train") -> tuple[np.ndarray, np.ndarray]:
    """A source's whole token stream and its document starts, read without the code under test."""
    manifest = json.loads((folder / "manifest.json").read_text())
    tokens, starts, base = [], [], 0
    for k, _ in enumerate(manifest["splits"][split]):
        t = np.fromfile(folder / split / f"shard-{k:05d}.bin", dtype=manifest["dtype"]).astype(np.int64)
        starts.append(np.fromfile(folder / split / f"shard-{k:05d}.idx", dtype="<u4").astype(np.int64) + base)
        tokens.append(t)
        base += len(t)
    return np.concatenate(tokens), np.concatenate(starts)


def test_parse_mixture_forms_and_errors():
    assert parse_mixture({"a": 0.693584, "b": 0.306416}) == [SourceWeight("a", 0.693584), SourceWeight("b", 0.306416)]
    m = parse_mixture({"a": {"weight": 0.75, "start_weight": 1.0, "ramp_tokens": "6e9"}, "b": {"weight": 0.25,
                                                                                              "start_weight": 0,
                                                                                              "ramp_tokens": 6e9}})
    assert m[0] == SourceWeight("a", 0.75, 1.0, 6e9) and m[1].at(np.array(3e9)) == pytest.approx(0.125)
    with pytest.raises(ValueError) as e:
        parse_mixture({"a": -1, "b": {"weight": 1, "ramp": 5}, "c": {"start_weight": 1}, "d": "x"})
    msg = str(e.value)
    for part in ("mixture.a.weight: must be a number >= 0", "mixture.b: unknown key(s) ['ramp']",
                 "mixture.c: 'weight' is required", "mixture.d.weight"):
        assert part in msg
    with pytest.raises(ValueError, match="sum to 0 at token 0"):
        parse_mixture({"a": 0, "b": 0.0})
    with pytest.raises(ValueError, match="sum to 0 at token 0"):  # ramped in from nothing: zero at the start
        parse_mixture({"a": {"weight": 1, "start_weight": 0, "ramp_tokens": 100}})
    with pytest.raises(ValueError, match="start_weight needs ramp_tokens"):
        parse_mixture({"a": {"weight": 1, "start_weight": 0.5}})


def test_proportions_match_the_weights(data_dir):
    mix = parse_mixture({"slimpajama": 0.693584, "starcoderdata": 0.306416})
    ds = MixtureDataset(data_dir, mix, SEQ, seed=3407)
    n = 50_000
    counts = ds.source_counts(0, n)
    assert counts.sum() == n
    assert np.abs(counts / n - [0.693584, 0.306416]).max() < 2e-4
    # the counts agree with the items themselves, on any window
    window = range(12_345, 15_345)
    seen = np.bincount([ds[i]["source"] for i in window], minlength=2)
    assert (seen == ds.source_counts(window.start, window.stop)).all()
    # at every block boundary (about 1024 samples apart) each source is within a sample of its exact target; in
    # between, the order inside a block is random
    for b in range(1, 200, 7):
        boundary = ds._schedule.start(b)
        assert np.abs(ds.source_counts(0, boundary) - boundary * np.array([0.693584, 0.306416])).max() <= 1
    assert abs(ds.source_counts(100_000, 101_000)[0] - 693.584) < 30
    # a different seed changes the order, not the proportions
    other = MixtureDataset(data_dir, mix, SEQ, seed=1)
    assert [other[i]["source"] for i in range(50)] != [ds[i]["source"] for i in range(50)]
    assert np.abs(other.source_counts(0, n) / n - [0.693584, 0.306416]).max() < 2e-4


def test_ramped_weights_are_followed(data_dir):
    ramp = 40 * 1024 * SEQ  # over the first 40 blocks of samples
    mix = parse_mixture({
        "slimpajama": {"weight": 0.75, "start_weight": 1.0, "ramp_tokens": ramp},
        "starcoderdata": {"weight": 0.15, "start_weight": 0.0, "ramp_tokens": ramp},
        "proof_pile_2": {"weight": 0.10, "start_weight": 0.0, "ramp_tokens": ramp}})
    ds = MixtureDataset(data_dir, mix, SEQ)
    for start in range(0, 60 * 1024, 2048):
        got = ds.source_counts(start, start + 2048) / 2048
        expected = ds.weights_at(start + 1024)
        assert np.abs(got - expected).max() < 0.01, (start, got, expected)
    assert ds.weights_at(0) == pytest.approx([1, 0, 0]) and ds.weights_at(10**9) == pytest.approx([0.75, 0.15, 0.1])
    assert ds.source_counts(0, 1024)[1:].sum() < 15  # barely any domain data at first
    # samples really come from the sources counted
    assert {ds[i]["source"] for i in range(30_000, 30_200)} == {0, 1, 2}


def test_sample_is_a_pure_function_of_seed_and_index(data_dir):
    mix = parse_mixture({"slimpajama": 0.5, "starcoderdata": 0.3, "proof_pile_2": 0.2})
    a = MixtureDataset(data_dir, mix, SEQ)
    forward = [a[i] for i in range(5000, 5100)]
    b = MixtureDataset(data_dir, mix, SEQ)  # a fresh process's view, read in another order, far jumps first
    b[10**9]
    backward = [b[i] for i in reversed(range(5000, 5100))][::-1]
    for x, y in zip(forward, backward):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["position_ids"], y["position_ids"])
        assert x["source"] == y["source"]
    c = pickle.loads(pickle.dumps(a))  # what a DataLoader worker gets: small, no memory maps
    assert len(pickle.dumps(a)) < 100_000 and torch.equal(c[5000]["input_ids"], forward[0]["input_ids"])


class _WithIndex(torch.utils.data.Dataset):
    """The dataset's items, tagged with their global index and the DataLoader worker that read them."""

    def __init__(self, ds):
        self.ds = ds

    def __getitem__(self, i):
        info = torch.utils.data.get_worker_info()
        return {**self.ds[i], "index": i, "worker": info.id if info else -1}


def _run(ds, start_index, samples_per_step, steps, world_size=2, workers=2, micro=2):
    """The batches each rank's DataLoader yields for ``steps`` steps: {rank: [batch, ...]}."""
    per_rank = samples_per_step // world_size
    out = {}
    for rank in range(world_size):
        sampler = DistributedStepSampler(start_index, samples_per_step, rank, world_size)
        loader = torch.utils.data.DataLoader(_WithIndex(ds), sampler=sampler, batch_size=micro, num_workers=workers)
        batches = list(itertools.islice(iter(loader), steps * per_rank // micro))
        out[rank] = batches
    return out


def test_ranks_and_workers_never_share_a_sample_and_resume_is_exact(data_dir):
    mix = parse_mixture({"slimpajama": 0.6, "starcoderdata": 0.4})
    ds = MixtureDataset(data_dir, mix, SEQ)
    sps = 8  # 2 ranks x 2 micro-batches of 2
    full = _run(ds, 0, sps, steps=6)
    indices = [int(i) for rank in full.values() for b in rank for i in b["index"]]
    assert sorted(indices) == list(range(6 * sps))  # every index once: no overlap, no gap
    workers = {(r, int(w)) for r, batches in full.items() for b in batches for w in b["worker"]}
    assert workers == {(0, 0), (0, 1), (1, 0), (1, 1)}  # 2 ranks x 2 workers all took part
    by_index = {int(i): b["input_ids"][k] for rank in full.values() for b in rank for k, i in enumerate(b["index"])}
    assert len({tuple(v.tolist()) for v in by_index.values()}) == len(by_index)  # different samples, not only indices
    # resume at step 3: the same samples as the uninterrupted run, on the same ranks
    resumed = _run(ds, 3 * sps, sps, steps=3)
    for rank in range(2):
        tail = full[rank][3 * (sps // 2) // 2:]
        assert [b["index"].tolist() for b in resumed[rank]] == [b["index"].tolist() for b in tail]
        for x, y in zip(resumed[rank], tail):
            assert torch.equal(x["input_ids"], y["input_ids"])
    # the batch size grows (cooldown): a new sampler starts at the samples consumed so far
    grown = _run(ds, 6 * sps, 2 * sps, steps=1, workers=0)
    assert sorted(int(i) for r in grown.values() for b in r for i in b["index"]) == list(range(6 * sps, 8 * sps))
    with pytest.raises(ValueError, match="multiple of world_size"):
        DistributedStepSampler(0, 9, 0, 2)


def test_every_token_is_a_target_once_per_epoch_and_epochs_reshuffle(data_dir):
    ds = MixtureDataset(data_dir, [SourceWeight("proof_pile_2", 1.0)], SEQ)  # 2 shards: samples cross them
    tokens, _ = _stream(data_dir / "proof_pile_2")
    assert len(json.loads((data_dir / "proof_pile_2" / "manifest.json").read_text())["splits"]["train"]) >= 2
    n = ds.samples_per_epoch[0]
    assert n == (len(tokens) - 1) // SEQ
    picks = [ds.pick(i) for i in range(2 * n)]
    first = [p[2] for p in picks[:n]]
    second = [p[2] for p in picks[n:]]
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n)) and first != second
    covered = np.zeros(len(tokens), dtype=int)
    for i in range(n):
        x = ds[i]["input_ids"].numpy()
        start = first[i] * SEQ
        assert (x == tokens[start:start + SEQ + 1]).all()  # the right tokens, whole: never padded
        covered[start + 1:start + SEQ + 1] += 1  # the targets
    assert (covered[1:n * SEQ + 1] == 1).all() and covered[n * SEQ + 1:].sum() == 0


def test_position_ids_restart_at_document_starts(data_dir, demo_tokenizer):
    ds = MixtureDataset(data_dir, [SourceWeight("proof_pile_2", 1.0)], SEQ)  # short documents: many per sample
    tokens, starts = _stream(data_dir / "proof_pile_2")
    for i in range(200):
        item = ds[i]
        ids, pos = item["input_ids"].numpy(), item["position_ids"].numpy()
        begin = ds.pick(i)[2] * SEQ
        doc_start = np.isin(np.arange(begin, begin + SEQ + 1), starts)
        assert (ids[doc_start] == demo_tokenizer.bos_token_id).all()  # BOS policy: each document starts with BOS
        expected = np.empty(SEQ + 1, dtype=np.int64)
        for t in range(SEQ + 1):
            expected[t] = 0 if t == 0 or doc_start[t] else expected[t - 1] + 1
        assert (pos == expected).all()
    assert item["input_ids"].dtype == torch.int64 and item["position_ids"].dtype == torch.int64


def test_validation_dataset_reads_the_held_out_documents_in_order(data_dir):
    val = validation_dataset(data_dir, ["slimpajama", "proof_pile_2"], SEQ)
    sp, _ = _stream(data_dir / "slimpajama", "validation")
    pp, _ = _stream(data_dir / "proof_pile_2", "validation")
    n_sp, n_pp = (len(sp) - 1) // SEQ, (len(pp) - 1) // SEQ
    assert len(val) == n_sp + n_pp
    assert (val[0]["input_ids"].numpy() == sp[:SEQ + 1]).all() and val[0]["source"] == 0
    assert (val[n_sp + 1]["input_ids"].numpy() == pp[SEQ:2 * SEQ + 1]).all() and val[n_sp + 1]["source"] == 1
    with pytest.raises(IndexError):
        val[len(val)]
    assert len(sp) == json.loads((data_dir / "slimpajama" / "manifest.json").read_text())["stats"]["tokens"][
        "validation"]


def test_permutation_is_a_bijection():
    for n in (1, 2, 3, 7, 64, 1000, 4097):
        for key in (0, 12345):
            p = _Permutation(n, key)
            values = [p(x) for x in range(n)]
            assert sorted(values) == list(range(n))
    assert [_Permutation(1000, 1)(x) for x in range(20)] != [_Permutation(1000, 2)(x) for x in range(20)]


def test_bad_data_dirs_are_named(data_dir, tmp_path):
    mix = parse_mixture({"slimpajama": 1, "nope": 1})
    with pytest.raises(FileNotFoundError, match=r"nope: no prepared source here \(prepared sources in .*: "
                                                r"proof_pile_2, skypile, slimpajama, starcoderdata\)"):
        MixtureDataset(data_dir, mix, SEQ)
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    with pytest.raises(ValueError, match="fewer than seq_len \\+ 1"):
        MixtureDataset(copy, [SourceWeight("skypile", 1)], 10**6)
    # a shard that does not match its manifest
    shard = copy / "skypile" / "train" / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes() + b"\0\0")
    with pytest.raises(ValueError, match=r"skypile/train/shard-00000.bin: \d+ bytes, but .*manifest.json says"):
        MixtureDataset(copy, [SourceWeight("skypile", 1)], SEQ)
    # an unfinished preparation
    manifest_path = copy / "proof_pile_2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match=r"proof_pile_2/manifest.json: preparation of 'proof_pile_2' is not finished"):
        MixtureDataset(copy, [SourceWeight("proof_pile_2", 1)], SEQ)
    # sources from different tokenizers
    manifest_path = copy / "slimpajama" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tokenizer"]["hash"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="different tokenizers"):
        MixtureDataset(copy, [SourceWeight("slimpajama", 1), SourceWeight("starcoderdata", 1)], SEQ)
    with pytest.raises(ValueError, match="weights sum to 0"):
        MixtureDataset(data_dir, [SourceWeight("slimpajama", 0)], SEQ)


def test_dataset_attributes(data_dir, demo_tokenizer):
    ds = MixtureDataset(data_dir, parse_mixture({"slimpajama": 1, "skypile": 1}), SEQ)
    assert ds.source_names == ["slimpajama", "skypile"] and ds.vocab_size == len(demo_tokenizer)
    assert len(ds) >= 2**62 and len(ds.tokenizer_hash) == 64


def test_open_shard_maps_are_bounded(data_dir, monkeypatch):
    from tinyllama.data.shards import TokenStream

    monkeypatch.setattr(TokenStream, "MAX_OPEN", 2)
    ds = MixtureDataset(data_dir, [SourceWeight("starcoderdata", 1.0)], SEQ)
    tokens, _ = _stream(data_dir / "starcoderdata")
    stream = ds.streams[0]
    assert len(stream.entries) > 10
    for i in range(300):
        start = ds.pick(i)[2] * SEQ
        assert (ds[i]["input_ids"].numpy() == tokens[start:start + SEQ + 1]).all()
        assert len(stream._maps) <= 2
