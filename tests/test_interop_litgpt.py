"""Checkpoint conversion checked by litgpt's own code (make test-interop): litgpt 0.5.13 from the package index, in a
side environment outside the repository (scripts/litgpt_env.sh), runs tests/litgpt_side.py on the files this
repository writes and reads.

- export: an export of this repository, converted by hf-to-litgpt, runs in litgpt's GPT with transformers' logits;
  the lit_model.pth equals what litgpt's own HF converter makes from the same folder, and litgpt's own converter
  back gives the original tensors;
- import: a model litgpt built and saved itself, converted by litgpt-to-hf, runs in transformers with litgpt's
  logits; the weights equal litgpt's own conversion to transformers' names, and the way back gives litgpt's file;
- TinyLlama's lit_gpt layout (attention fused and grouped per key/value head): the tensors tests/convert_helpers.py
  writes from its published description are read by litgpt's own loader of that legacy layout with the original's
  logits, so the layout our import reads is the one litgpt reads.
Each with TinyLlama's attention shape (32 query heads, 4 key/value heads) and RoPE base 100, and a control showing
that the comparison would fail for a wrong layout or RoPE base.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from convert_helpers import (GQA_CONFIG, hf_state, logits_of, save_gqa_folder, lit_gpt_state, token_ids)
from tinyllama.convert import convert

pytestmark = pytest.mark.litgpt
SIDE = Path(__file__).resolve().parent / "litgpt_side.py"
TOL = dict(rtol=1e-4, atol=1e-4)  # float32, two implementations (sdpa in both): agreement is about 1e-6
WRONG = 1e-2


def side(tmp_path, *jobs) -> None:
    """Run jobs in litgpt's environment (its own Python, none of this repository's packages)."""
    python = os.environ.get("TINYLLAMA_LITGPT_PYTHON", "")
    if not Path(python).is_file():
        pytest.fail(f"TINYLLAMA_LITGPT_PYTHON={python!r} is not litgpt's python: run `make test-interop` "
                    "(scripts/litgpt_env.sh builds it)")
    jobs_file = tmp_path / f"jobs-{len(list(tmp_path.glob('jobs-*')))}.json"
    jobs_file.write_text(json.dumps([[str(a) for a in job] for job in jobs]))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([python, str(SIDE), str(jobs_file)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def original(tmp_path_factory, demo_paths):
    folder = tmp_path_factory.mktemp("original") / "model"
    model = save_gqa_folder(folder, demo_paths["tokenizer"])
    ids = token_ids()
    torch.save(ids, folder.parent / "ids.pt")
    return folder, hf_state(model), logits_of(model, ids), folder.parent / "ids.pt"


def test_export_runs_in_litgpt_with_transformers_logits(original, tmp_path):
    folder, state, logits, ids = original
    lit = convert("hf-to-litgpt", folder, tmp_path / "litgpt")
    # the same architecture at litgpt's default RoPE base (the control: the base must reach litgpt)
    base = tmp_path / "base10000"
    base.mkdir()
    (base / "lit_model.pth").symlink_to(lit / "lit_model.pth")
    cfg = yaml.safe_load((lit / "model_config.yaml").read_text())
    (base / "model_config.yaml").write_text(yaml.safe_dump({**cfg, "rope_base": 10000}))
    side(tmp_path, ["logits", lit, ids, tmp_path / "lit.pt"], ["logits", base, ids, tmp_path / "base.pt"],
         ["from_hf", folder, lit, tmp_path / "litgpt_own.pt"], ["to_hf", lit, tmp_path / "back.pt"])

    torch.testing.assert_close(torch.load(tmp_path / "lit.pt"), logits, **TOL)
    assert (torch.load(tmp_path / "base.pt") - logits).abs().max() > WRONG
    ours, theirs = torch.load(lit / "lit_model.pth"), torch.load(tmp_path / "litgpt_own.pt")
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "litgpt's own conversion differs from ours"
    back = torch.load(tmp_path / "back.pt")
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_litgpt_checkpoint_imports_with_litgpt_logits(original, tmp_path, demo_paths):
    _, _, _, ids = original
    c = GQA_CONFIG
    lit_config = {"name": "gqa-test", "block_size": c["max_position_embeddings"], "vocab_size": c["vocab_size"],
                  "padded_vocab_size": c["vocab_size"], "n_layer": c["num_hidden_layers"],
                  "n_embd": c["hidden_size"], "n_head": c["num_attention_heads"],
                  "n_query_groups": c["num_key_value_heads"], "head_size": c["head_dim"],
                  "intermediate_size": c["intermediate_size"], "rope_base": 100, "rotary_percentage": 1.0,
                  "parallel_residual": False, "bias": False, "norm_class_name": "RMSNorm", "norm_eps": 1e-5,
                  "mlp_class_name": "LLaMAMLP"}  # (as litgpt's TinyLlama entry, at toy width)
    (tmp_path / "config.json").write_text(json.dumps(lit_config))
    made = tmp_path / "made-by-litgpt"
    side(tmp_path, ["new", tmp_path / "config.json", made], ["logits", made, ids, tmp_path / "lit.pt"],
         ["to_hf", made, tmp_path / "litgpt_own.pt"])

    hf = convert("litgpt-to-hf", made, tmp_path / "hf", tokenizer=str(demo_paths["tokenizer"]))
    lit_logits = torch.load(tmp_path / "lit.pt")
    torch.testing.assert_close(logits_of(hf, torch.load(ids)), lit_logits, **TOL)
    from safetensors.torch import load_file

    ours, theirs = load_file(str(hf / "model.safetensors")), torch.load(tmp_path / "litgpt_own.pt")
    assert sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = convert("hf-to-litgpt", hf, tmp_path / "again")
    original_lit, back = torch.load(made / "lit_model.pth"), torch.load(again / "lit_model.pth")
    assert sorted(back) == sorted(original_lit) and all(torch.equal(back[k], original_lit[k]) for k in back)
    # control: the same weights with transformers' default RoPE base (10000) give other logits
    import shutil

    shutil.copytree(hf, tmp_path / "base10000")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["rope_parameters"]["rope_theta"] = 10000.0
    (tmp_path / "base10000" / "config.json").write_text(json.dumps(cfg))
    assert (logits_of(tmp_path / "base10000", torch.load(ids)) - lit_logits).abs().max() > WRONG


def test_tinyllama_lit_gpt_layout_is_what_litgpt_reads(original, tmp_path):
    folder, state, logits, ids = original
    config = convert("hf-to-litgpt", folder, tmp_path / "config-source") / "model_config.yaml"
    dirs = {}
    for name, grouped in (("grouped", True), ("stacked", False)):
        d = dirs[name] = tmp_path / name
        d.mkdir()
        # TinyLlama's fused attention as published (attn.attn, grouped per key/value head), with litgpt's MLP names:
        # litgpt reads attn.attn as its legacy layout (qkv_reassemble) and converts it on loading
        lit = lit_gpt_state(state, GQA_CONFIG, mlp_names=("fc_1", "fc_2", "proj"), grouped=grouped)
        torch.save({"model": lit}, d / "lit_model.pth")
        (d / "model_config.yaml").write_bytes(config.read_bytes())
    side(tmp_path, ["logits", dirs["grouped"], ids, tmp_path / "grouped.pt"],
         ["logits", dirs["stacked"], ids, tmp_path / "stacked.pt"])
    torch.testing.assert_close(torch.load(tmp_path / "grouped.pt"), logits, **TOL)
    assert (torch.load(tmp_path / "stacked.pt") - logits).abs().max() > WRONG
