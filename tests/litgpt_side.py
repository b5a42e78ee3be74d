"""litgpt's own code on files the tests hand over, run by the Python of litgpt's side environment (make test-interop,
scripts/litgpt_env.sh), never by pytest: that environment has litgpt and its pinned dependencies, not this repository's.

    <litgpt python> tests/litgpt_side.py JOBS.json

JOBS.json is a list of [command, arguments...], run in order in one process (litgpt imports in about 4 s):
    ["new", CONFIG.json, OUT_DIR]      litgpt builds a model from Config(**CONFIG) (weights drawn as
                                       tests/convert_helpers.py's sharpen_) and saves it as litgpt does:
                                       lit_model.pth + model_config.yaml (litgpt.utils.save_config)
    ["logits", CKPT_DIR, IDS.pt, OUT.pt]   litgpt's GPT, loaded strictly from CKPT_DIR's lit_model.pth with its
                                       model_config.yaml, on the token ids of IDS.pt
    ["to_hf", CKPT_DIR, OUT.pt]        litgpt's converter to transformers' names (convert_lit_checkpoint.copy_weights_llama)
    ["from_hf", HF_DIR, CKPT_DIR, OUT.pt]  litgpt's converter from transformers' names
                                       (convert_hf_checkpoint.copy_weights_hf_llama) with CKPT_DIR's config
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_helpers import sharpen_  # noqa: E402  (torch only at import time)


def config_of(ckpt_dir):
    from litgpt import Config

    return Config.from_file(Path(ckpt_dir) / "model_config.yaml")


def load_lit(ckpt_dir):
    state = torch.load(Path(ckpt_dir) / "lit_model.pth", map_location="cpu", weights_only=True)
    return state.get("model", state)


def new(config_json, out_dir):
    from litgpt import Config
    from litgpt.model import GPT
    from litgpt.utils import save_config

    config = Config(**json.loads(Path(config_json).read_text()))
    model = GPT(config)
    sharpen_(model.named_parameters())
    with torch.no_grad():  # sharp attention, as sharpen_ does for transformers' q_proj and k_proj
        for block in model.transformer.h:
            block.attn.qkv.weight[:(config.n_head + config.n_query_groups) * config.head_size].mul_(3.0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "lit_model.pth")
    save_config(config, out)


def logits(ckpt_dir, ids_file, out_file):
    from litgpt.model import GPT

    model = GPT(config_of(ckpt_dir))
    model.load_state_dict(load_lit(ckpt_dir), strict=True)
    model.eval()
    with torch.no_grad():
        torch.save(model(torch.load(ids_file)), out_file)


def to_hf(ckpt_dir, out_file):
    from litgpt.scripts.convert_lit_checkpoint import copy_weights_llama

    state = {}
    copy_weights_llama(config_of(ckpt_dir), state, load_lit(ckpt_dir))
    torch.save(state, out_file)


def from_hf(hf_dir, ckpt_dir, out_file):
    from litgpt.scripts.convert_hf_checkpoint import copy_weights_hf_llama
    from safetensors.torch import load_file

    state = {}
    copy_weights_hf_llama(config_of(ckpt_dir), {}, state, load_file(str(Path(hf_dir) / "model.safetensors")))
    torch.save(state, out_file)


if __name__ == "__main__":
    commands = {"new": new, "logits": logits, "to_hf": to_hf, "from_hf": from_hf}
    for command, *args in json.loads(Path(sys.argv[1]).read_text()):
        commands[command](*args)
