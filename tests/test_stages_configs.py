"""The v1.1 stage configs hold together (no training): token budgets, batch sizes and their divisibility, the one
cosine the three stages share, ramps, the cooldown mixtures, the python-v0.1 variant, the WSD alternative, and the
pipelines that chain them."""

import math

import pytest

from tinyllama.config import ConfigError, parse_config
from tinyllama.data import parse_mixture
from tinyllama.training.args import PretrainArgs
from tinyllama.training.schedule import LRSchedule
from tinyllama.utils import repo_root

REPO = repo_root()
VARIANTS = ["general", "math_code", "chinese"]


def cfg(rel: str, *overrides: str) -> PretrainArgs:
    (a,) = parse_config(PretrainArgs, ["--config", str(REPO / "configs" / rel), *overrides])
    return a


def chain(pipeline: str, variant: str | None = None) -> list[PretrainArgs]:
    """The pretraining stages of a shipped pipeline as the pipeline runs them: `lr_step_offset: continue` derived
    from the stage before (tinyllama/pipeline/plan.py)."""
    from tinyllama.pipeline import load_pipeline, plan

    stages = plan(load_pipeline(REPO / "configs" / "pipeline" / f"{pipeline}.yaml"), variant)
    return [parse_config(PretrainArgs, s.argv)[0] for s in stages]


def tokens(a: PretrainArgs) -> int:
    return a.max_steps * a.global_batch_size * a.seq_len


@pytest.mark.parametrize("variant", VARIANTS)
def test_real_chain_budgets_batches_and_one_continued_cosine(variant):
    basic, cont, cool = chain("tinyllama-v1.1", variant)
    # the configs say 'continue'; the pipeline derives the number from the stage before (docs/stages.md)
    assert cfg(f"continual/{variant}.yaml").lr_step_offset == cfg(f"cooldown/{variant}.yaml").lr_step_offset == \
        "continue"
    # docs/reference.md: 1.5T + ~350B + ~150B = 2T; batch about 1.8M tokens, 7.2M in the cooldown
    assert tokens(basic) == pytest.approx(1.5e12, rel=1e-6)
    assert tokens(cont) == pytest.approx(350e9, rel=1e-5)
    assert tokens(cool) == pytest.approx(150e9, rel=1e-4)
    assert tokens(basic) + tokens(cont) + tokens(cool) == pytest.approx(2e12, rel=1e-6)
    assert basic.global_batch_size * 2048 == cont.global_batch_size * 2048 == 1_835_008
    assert cool.global_batch_size == 4 * basic.global_batch_size and cool.global_batch_size * 2048 == 7_340_032
    # one cosine over all the steps of the three stages; each stage starts where the previous one stopped
    total = basic.max_steps + cont.max_steps + cool.max_steps
    assert basic.lr_schedule_steps == cont.lr_schedule_steps == cool.lr_schedule_steps == total
    assert (basic.lr_step_offset, cont.lr_step_offset, cool.lr_step_offset) == (
        0, basic.max_steps, basic.max_steps + cont.max_steps)
    whole = LRSchedule(4e-4, 4e-5, 2000, total)
    stages = [LRSchedule.from_args(a) for a in (basic, cont, cool)]
    assert all(s.kind == "cosine" and (s.peak, s.min_lr, s.warmup_steps) == (4e-4, 4e-5, 2000) for s in stages)
    for a, s in zip((basic, cont, cool), stages):
        for step in (0, 1, a.max_steps // 2, a.max_steps - 1):
            assert s(step) == whole(a.lr_step_offset + step)
    assert stages[1](0) == whole(basic.max_steps)  # continual's first lr = the one stage 1 would have used next
    assert stages[2](cool.max_steps - 1) == pytest.approx(4e-5, rel=1e-6)  # the cooldown ends on the floor
    # every stage after the first starts from the previous one's export, with its own data order
    assert cont.init_from == f"{basic.output_dir}/export/final" and cool.init_from == f"{cont.output_dir}/export/final"
    assert cfg(f"continual/{variant}.yaml").init_from == "outputs/tinyllama-v1.1/basic/export/final"
    assert len({basic.seed, cont.seed, cool.seed}) == 3
    assert (basic.stage, cont.stage, cool.stage) == ("basic", "continual", "cooldown")
    assert basic.mixture == {"slimpajama": 1.0} and basic.model_config == "tinyllama-1.1b"
    assert cont.model_config is None and cont.init_optimizer is False


@pytest.mark.parametrize("gpus,micro,divides", [(8, 8, True), (16, 8, True), (32, 8, False), (64, 8, False),
                                                 (32, 4, True), (64, 2, True)])
def test_batch_divisibility_stated_in_the_configs(gpus, micro, divides, monkeypatch):
    """The comments say which GPU counts the 896-sequence batch divides over; the recipe's validation agrees, and
    the 4x cooldown batch divides over all of them with micro batch 8."""
    monkeypatch.setenv("WORLD_SIZE", str(gpus))
    if divides:
        cfg("pretrain/v1.1-stage1-basic.yaml", "--micro_batch_size", str(micro))
    else:
        with pytest.raises(ConfigError, match="global batch 896 .* not divisible"):
            cfg("pretrain/v1.1-stage1-basic.yaml", "--micro_batch_size", str(micro))
    cfg("cooldown/general.yaml")


@pytest.mark.parametrize("variant,domain", [("math_code", {"starcoderdata": 0.15, "proof_pile_2": 0.10}),
                                            ("chinese", {"skypile": 0.5})])
@pytest.mark.parametrize("prefix", ["", "demo-"])
def test_continual_ramps_and_cooldown_mixtures(variant, domain, prefix):
    cont = cfg(f"continual/{prefix}{variant}.yaml")
    mix = {m.name: m for m in parse_mixture(cont.mixture)}
    main = "slimpajama"
    assert mix[main].start_weight == 1.0 and mix[main].weight == pytest.approx(1 - sum(domain.values()))
    ramp = 6e9 if not prefix else mix[main].ramp_tokens
    for name, weight in domain.items():
        assert (mix[name].start_weight, mix[name].weight, mix[name].ramp_tokens) == (0.0, weight, ramp)
    # the cooldown keeps the continual stage's mixture at its target weights, with no ramp
    cool = cfg(f"cooldown/{prefix}{variant}.yaml")
    assert cool.mixture == {m.name: m.weight for m in mix.values()}
    assert cool.init_from.endswith(f"continual-{variant}/export/final")


def test_code_variant_is_python_v01():
    a = cfg("continual/code.yaml")
    assert a.init_from == "TinyLlama/TinyLlama-1.1B-intermediate-step-240k-503b"
    assert a.mixture == {"starcoderdata_python": 1.0}
    assert (a.learning_rate, a.min_lr, a.warmup_steps, a.max_steps) == (2e-4, 2e-5, 0, 10_000)
    assert a.global_batch_size * a.seq_len == 360 * 2048 and tokens(a) == pytest.approx(7.4e9, rel=0.01)
    lr = LRSchedule.from_args(a)
    assert lr(0) == 2e-4 and lr(9_999) == pytest.approx(2e-5, rel=1e-6)
    demo = cfg("continual/demo-code.yaml")
    assert LRSchedule.from_args(demo)(0) == demo.learning_rate and demo.warmup_steps == 0


@pytest.mark.parametrize("prefix,pipeline", [("", "tinyllama-v1.1-wsd"), ("demo-", "demo-wsd")])
def test_wsd_chain_holds_the_peak_then_decays_over_the_cooldown(prefix, pipeline):
    args = chain(pipeline)
    basic, cont, cool = args
    assert [a.lr_schedule for a in args] == ["constant", "constant", "wsd"]
    peak = basic.learning_rate
    assert LRSchedule.from_args(basic)(basic.warmup_steps) == peak and LRSchedule.from_args(cont)(0) == peak
    assert LRSchedule.from_args(cont)(cont.max_steps - 1) == peak
    lr = [LRSchedule.from_args(cool)(s) for s in range(cool.max_steps)]
    assert all(a > b for a, b in zip(lr, lr[1:])) and lr[-1] == pytest.approx(cool.min_lr)
    assert lr[0] < peak and cool.decay_shape == "1-sqrt" and cool.global_batch_size == 4 * basic.global_batch_size
    # 1-sqrt: below the linear decay everywhere inside the decay
    mid = cool.max_steps // 2
    assert lr[mid] < cool.min_lr + (peak - cool.min_lr) * (1 - (mid + 1) / cool.max_steps)


def test_demo_chain_continues_one_cosine():
    basic, cont, cool = chain("demo", "math_code")
    total = basic.max_steps + cont.max_steps + cool.max_steps
    assert basic.lr_schedule_steps == total and cont.lr_step_offset == basic.max_steps
    assert cool.lr_step_offset == basic.max_steps + cont.max_steps
    assert cool.global_batch_size == 4 * cont.global_batch_size and basic.log_every == 1
    assert LRSchedule.from_args(cool)(cool.max_steps) == basic.min_lr  # the cosine ends with the chain
    # the demo's ramp spans whole blocks of the mixture (1,024 samples), so the logged shares visibly climb
    ramp = parse_mixture(cont.mixture)[0].ramp_tokens
    assert ramp % (1024 * cont.seq_len) == 0 and ramp < tokens(cont)


def test_real_pipeline_plans_per_variant():
    from tinyllama.pipeline import load_pipeline, plan

    p = load_pipeline(REPO / "configs" / "pipeline" / "tinyllama-v1.1.yaml")
    names = {v: [s.name for s in plan(p, v, with_chat=True, with_eval=True)] for v in p.variants}
    assert names["math_code"] == ["basic", "continual-math_code", "cooldown-math_code", "sft-math_code",
                                  "dpo-math_code", "eval-math_code"]
    assert names["code"] == ["continual-code", "sft-code", "dpo-code", "eval-code"]
    stages = {s.name: s for s in plan(p, "chinese", "/x")}
    assert stages["continual-chinese"].init_from == "/x/basic/export/final"
    assert stages["cooldown-chinese"].resolved["init_from"] == "/x/continual-chinese/export/final"
    assert stages["cooldown-chinese"].resolved["output_dir"] == "/x/cooldown-chinese"
    code = plan(p, "code", "/x")[0]
    assert code.init_from is None and code.resolved["init_from"] == "TinyLlama/TinyLlama-1.1B-intermediate-step-240k-503b"
    assert math.isclose(code.resolved["learning_rate"], 2e-4)
