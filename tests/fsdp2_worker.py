"""A few steps of FSDP2 (torch's ``fully_shard``) training on CPU with gloo, saved and resumed through accelerate's own
FSDP checkpoint functions (``save_fsdp_model``/``save_fsdp_optimizer``/``load_fsdp_model``/``load_fsdp_optimizer``:
torch.distributed.checkpoint, sharded state dict), for tests/test_resume_world_size.py.

accelerate's FSDP needs CUDA (on CPU it sets up DDP: tinyllama.training.core.make_accelerator refuses that), so the
recipe's FSDP2 path cannot run here; this worker runs the pieces a resume on another number of processes depends
on: FSDP2 sharding, the checkpoint format accelerate writes, and torch.distributed.checkpoint's resharding on load.

    torchrun --nproc_per_node N tests/fsdp2_worker.py OUT_DIR --steps 4 [--save_at 2] [--resume_from DIR]

Step s trains on global samples [s*B, (s+1)*B) (B = 8), rank r on its contiguous slice (the recipe's
DistributedStepSampler) in micro-batches of 4 (gradient accumulation B / (4 x N)); OUT_DIR/final.pt gets the whole
fp32 weights (rank 0).
"""

import argparse
import os
from types import SimpleNamespace

import torch
import torch.distributed as dist

GLOBAL_BATCH, MICRO, SEQ = 8, 4, 32


def sample(i: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (SEQ + 1,), generator=torch.Generator().manual_seed(1000 + i))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--save_at", type=int, default=0)
    p.add_argument("--resume_from", default=None)
    a = p.parse_args()
    from accelerate import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import load_fsdp_model, load_fsdp_optimizer, save_fsdp_model, save_fsdp_optimizer
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from tinyllama.data import DistributedStepSampler
    from tinyllama.model import build_model, init_weights
    from tinyllama.training.core import forward_loss

    PartialState(cpu=True)  # gloo process group (accelerate's logging in its FSDP functions needs the state)
    world, rank = dist.get_world_size(), dist.get_rank()

    model = build_model("tiny", attn_implementation="sdpa", seed=0)
    init_weights(model, "tinyllama", seed=0)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.model.layers:  # as accelerate's TRANSFORMER_BASED_WRAP on LlamaDecoderLayer
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    # what accelerate's FSDP checkpoint functions read of the Accelerator
    acc = SimpleNamespace(num_processes=world, process_index=rank, is_main_process=rank == 0, is_fsdp2=True,
                          wait_for_everyone=dist.barrier)
    start = 0
    if a.resume_from:
        load_fsdp_model(plugin, acc, model, a.resume_from)
        load_fsdp_optimizer(plugin, acc, optimizer, model, a.resume_from)
        start = int(open(os.path.join(a.resume_from, "step")).read())
    vocab = model.config.vocab_size
    for step in range(start, a.steps):
        accum = GLOBAL_BATCH // (MICRO * world)
        indices = iter(DistributedStepSampler(step * GLOBAL_BATCH, GLOBAL_BATCH, rank, world))
        for _ in range(accum):
            ids = torch.stack([sample(next(indices), vocab) for _ in range(MICRO)])
            loss = forward_loss(model, {"input_ids": ids}, False, "cpu")  # the recipe's loss of a micro-batch
            (loss / accum).backward()  # fully_shard reduce-scatters the mean over ranks, sums over micro-batches
        optimizer.step()
        optimizer.zero_grad()
        if step + 1 == a.save_at:
            ckpt = os.path.join(a.out, "checkpoint")
            save_fsdp_model(plugin, acc, model, ckpt)
            save_fsdp_optimizer(plugin, acc, optimizer, model, ckpt)
            if rank == 0:
                open(os.path.join(ckpt, "step"), "w").write(str(step + 1))
            dist.barrier()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(full, os.path.join(a.out, "final.pt"))
    dist.barrier()


if __name__ == "__main__":
    main()
