"""Chat SFT: the template, labels, loss, training/inference round trip, the chat command, and the
mistakes a user can make (unknown keys, bad rows, QLoRA without CUDA, a Hub token in the config).

One SFT run of a tiny model (configs/model/tiny.json, random weights) on fixed-answer chats is shared by the
tests that need a trained model: it memorises the answers, so what scripts/chat.py must print is known exactly.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from chat_helpers import FIXED_QA, FIXED_SYSTEM, fixed_answer_rows
from pretrain_utils import load_script
from tinyllama import chat
from tinyllama.chat.demo_data import build_base_model, ultrachat_rows, ultrafeedback_rows, write_hub_layout

REPO = Path(__file__).resolve().parent.parent
HUB_SECRET = "hf_thisIsNotARealTokenButMustNeverBeWritten"

# Zephyr's template exactly as TinyLlama-1.1B-Chat-v1.0 and the alignment-handbook ship it (the reference our
# template must reproduce; ours adds the BOS and the generation markers).
ZEPHYR_REFERENCE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
CONVERSATION = [
    {"role": "system", "content": FIXED_SYSTEM},
    {"role": "user", "content": FIXED_QA[0][0]},
    {"role": "assistant", "content": FIXED_QA[0][1]},
    {"role": "user", "content": FIXED_QA[1][0]},
    {"role": "assistant", "content": FIXED_QA[1][1]},
]


def run(*cmd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TINYLLAMA_DEBUG": ""}
    return subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def sft_cli(base, data, out, *extra: str) -> list[str]:
    """Command-line arguments of recipes/sft.py for a tiny CPU run ("'no'" is YAML for the string no)."""
    return ["--model_name_or_path", str(base), "--dataset_name", str(data), "--output_dir", str(out),
            "--max_length", "128", "--per_device_train_batch_size", "8", "--bf16", "false",
            "--activation_checkpointing", "false", "--report_to", "none", "--save_strategy", "'no'",
            "--eval_strategy", "'no'", "--logging_steps", "5", "--dataloader_pin_memory", "false",
            "--disable_tqdm", "true", "--warmup_steps", "0", "--seed", "0", *extra]


@pytest.fixture(scope="module")
def tokenizer(demo_paths):
    return chat.setup_tokenizer(str(demo_paths["tokenizer"]))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, demo_paths):
    """The "base model": tiny random weights, demo tokenizer (no pad token, no chat template)."""
    return build_base_model(tmp_path_factory.mktemp("base") / "model", model_config="tiny")


@pytest.fixture(scope="module")
def fixed_data(tmp_path_factory):
    rows = fixed_answer_rows(48)
    assert rows[0]["messages"] == CONVERSATION
    return write_hub_layout(tmp_path_factory.mktemp("data") / "fixed", {"train_sft": rows, "test_sft": rows[:16]})


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_base, fixed_data):
    """SFT through the recipe's own functions: evaluate, train 60 steps, save (as recipes/sft.py main does)."""
    from tinyllama.chat.args import parse_sft_args

    sft = load_script("recipes/sft.py")
    out = tmp_path_factory.mktemp("sft") / "out"
    args = parse_sft_args(sft_cli(tiny_base, fixed_data, out, "--max_steps", "60", "--learning_rate", "1e-2",
                                  "--lr_scheduler_type", "constant", "--eval_strategy", "steps",
                                  "--eval_steps", "1000"))
    os.environ["HF_TOKEN"] = HUB_SECRET  # a token in the environment must not land in any file
    try:
        trainer = sft.build_trainer(*args)
        before = trainer.evaluate()["eval_loss"]
        metrics = chat.train_and_save(trainer, None, *args)
    finally:
        del os.environ["HF_TOKEN"]
    return SimpleNamespace(trainer=trainer, out=out, before=before, metrics=metrics)


# ---------------------------------------------------------------------------------------------------------------
# The template and the tokenizer
# ---------------------------------------------------------------------------------------------------------------
def test_template_renders_tinyllama_chat_format(tokenizer):
    """Our template = BOS + what TinyLlama-Chat-v1.0's renders, with and without system prompt / generation prompt."""
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[:2], CONVERSATION[:4]):
        for gen in (False, True):
            ours = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                                   chat_template=ZEPHYR_REFERENCE)
            assert ours == "<s>" + theirs
    text = tokenizer.apply_chat_template(CONVERSATION[:4], tokenize=False, add_generation_prompt=True)
    assert text == ("<s><|system|>\nYou are a helpful assistant.</s>\n<|user|>\nWhat is your name?</s>\n"
                    "<|assistant|>\nMy name is TinyLlama.</s>\n<|user|>\nWhat color is the sky?</s>\n<|assistant|>\n")


def test_template_rejects_unknown_roles(tokenizer):
    with pytest.raises(Exception, match="unknown chat role: tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_pad_token_is_distinct_from_eos(demo_paths):
    from transformers import AutoTokenizer

    tok = chat.setup_tokenizer(str(demo_paths["tokenizer"]))  # Llama-style: unk/bos/eos only, like Llama-2's
    assert tok.pad_token == "<unk>" and tok.pad_token_id != tok.eos_token_id
    tok = AutoTokenizer.from_pretrained(str(demo_paths["tokenizer"]))
    tok.pad_token = tok.eos_token  # what TRL and many recipes default to
    chat.set_pad_token(tok)
    assert tok.pad_token_id == tok.unk_token_id != tok.eos_token_id
    tok.unk_token = None
    tok.pad_token = tok.eos_token
    with pytest.raises(ValueError, match="never learn to stop"):
        chat.set_pad_token(tok)


# ---------------------------------------------------------------------------------------------------------------
# SFT: labels, loss, round trip, saved files, the chat command
# ---------------------------------------------------------------------------------------------------------------
def test_sft_labels_only_on_assistant_replies_and_their_eos(sft_run, tokenizer):
    row = sft_run.trainer.train_dataset[0]  # CONVERSATION: system prompt, two exchanges
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels)
    assert all(lab in (-100, tok) for tok, lab in zip(ids, labels))
    spans, current = [], []
    for tok, lab in zip(ids, labels):
        if lab != -100:
            current.append(tok)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    # exactly the replies, each ending with its EOS; system, user, role markers and BOS all -100
    assert [tokenizer.decode(s) for s in spans] == [r + "</s>" for r in replies]
    eos = tokenizer.eos_token_id
    assert all(s[-1] == eos for s in spans)
    # the turns end system, user, assistant, user, assistant: only the assistants' EOS are trained
    assert [labels[i] == eos for i, t in enumerate(ids) if t == eos] == [False, False, True, False, True]
    assert ids[0] == tokenizer.bos_token_id and labels[0] == -100
    # padding cannot hide an EOS: pad is <unk>, in the tokenizer and in the model's configs
    model = sft_run.trainer.model
    assert sft_run.trainer.processing_class.pad_token_id == model.config.pad_token_id == tokenizer.unk_token_id
    assert model.config.pad_token_id != eos


def test_sft_steps_lower_the_loss(sft_run):
    after = sft_run.metrics["eval_loss"]
    assert after < 0.2 * sft_run.before, (sft_run.before, after)


def test_training_format_equals_inference_format(sft_run):
    """What SFT trained on, token for token, is what inference builds from the saved tokenizer's template."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(sft_run.out))
    assert saved.chat_template == chat.ZEPHYR_CHAT_TEMPLATE
    assert saved.pad_token_id != saved.eos_token_id
    row = sft_run.trainer.train_dataset[0]
    train_ids, labels = row["input_ids"], row["labels"]
    assert train_ids == saved.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    text = saved.apply_chat_template(CONVERSATION, tokenize=False)
    prompt_text = saved.apply_chat_template(CONVERSATION[:-1], tokenize=False, add_generation_prompt=True)
    assert text == prompt_text + CONVERSATION[-1]["content"] + "</s>\n"
    prompt = saved.apply_chat_template(CONVERSATION[:-1], tokenize=True, add_generation_prompt=True,
                                       return_dict=True)["input_ids"]
    assert train_ids[: len(prompt)] == prompt  # the inference prompt is a prefix of the training sequence
    completion = [t for t in labels[len(prompt):] if t != -100]
    assert saved.decode(completion) == CONVERSATION[-1]["content"] + "</s>"
    assert all(lab == -100 for lab in labels[: len(prompt)][-5:])  # the generation prompt is not trained


def test_saved_model_has_template_card_and_config_without_secrets(sft_run):
    out = sft_run.out
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer.model", "chat_template.jinja",
                 "README.md", "config.yaml", "generation_config.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    for expected in ("Base model:", str(sft_run.trainer.card_info["base_model"]), "Data:", "learning_rate", "0.01",
                     "assistant_only_loss", "max_length", "eval_loss", "Zephyr"):
        assert expected in card, expected
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["learning_rate"] == 0.01
    for path in out.rglob("*"):
        if path.is_file():
            assert HUB_SECRET.encode() not in path.read_bytes(), path


def test_chat_script_answers_and_stops_at_eos(sft_run):
    q, a = FIXED_QA[0]
    result = run("scripts/chat.py", str(sft_run.out), "--prompt", q, "--temperature", "0", "--max_new_tokens", "40")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == a
    assert "stopped at EOS" in result.stderr
    # in process: the other question, and a multi-turn history with a system prompt, through the same code
    cli = load_script("scripts/chat.py")
    model, tok = cli.load(str(sft_run.out))
    text, stopped, n = cli.reply(model, tok, [{"role": "user", "content": FIXED_QA[1][0]}], temperature=0,
                                 max_new_tokens=40, stream=False)
    assert (text, stopped) == (FIXED_QA[1][1], True) and n < 40
    text, stopped, _ = cli.reply(model, tok, CONVERSATION[:4], temperature=0, max_new_tokens=40, stream=False)
    assert (text, stopped) == (FIXED_QA[1][1], True)


def test_drafted_and_prompt_lookup_decoding_equal_plain_greedy(sft_run, tiny_base, tmp_path, capsys):
    """--draft (assisted generation) and --prompt_lookup: greedy output token for token equal to plain greedy, with a
    draft that is mostly wrong (the untrained base) and one that is always right (a copy of the model); a draft with
    another vocabulary is refused."""
    cli = load_script("scripts/chat.py")
    model, tok = cli.load(str(sft_run.out))
    chats = [[{"role": "user", "content": q}] for q, _ in FIXED_QA] + [CONVERSATION[:4]]
    chats += [[{"role": "user", "content": "Count from 1 to 5, then spell the word river backwards."}]]
    drafts = {"untrained": cli.load_draft(str(tiny_base), model, tok),
              "same weights": cli.load_draft(str(sft_run.out), model, tok)}
    for messages in chats:
        inputs = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")
        kwargs = dict(do_sample=False, max_new_tokens=30, temperature=None, top_p=None, top_k=None,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            plain = model.generate(**inputs, **kwargs)[0].tolist()
            for name, draft in drafts.items():
                counter = cli.ForwardCounter(model)
                assert model.generate(**inputs, assistant_model=draft, **kwargs)[0].tolist() == plain, name
                counter.remove()
                if name == "same weights":  # every proposal accepted: fewer forward passes of the model than tokens
                    assert counter.calls < len(plain) - inputs["input_ids"].shape[1]
            assert model.generate(**inputs, prompt_lookup_num_tokens=5, **kwargs)[0].tolist() == plain
    # the command line, in process: the same reply and its summary
    q, a = FIXED_QA[0]
    assert cli.main([str(sft_run.out), "--prompt", q, "--temperature", "0", "--draft", str(tiny_base)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == a and "stopped at EOS" in captured.err and "forward passes" in captured.err
    other = tmp_path / "other-vocab"
    from transformers import AutoTokenizer

    shutil.copytree(tiny_base, other)
    extended = AutoTokenizer.from_pretrained(str(other))
    extended.add_tokens(["<not-in-the-model>"])
    extended.save_pretrained(other)
    with pytest.raises(ValueError, match="different tokenizer"):
        cli.load_draft(str(other), model, tok)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_client_talks_to_transformers_serve(sft_run):
    """The documented way to serve an export (`transformers serve MODEL`, OpenAI-compatible): the real server on the
    trained chat model, the openai client; chat completion, streaming, max_tokens, stop at </s>, system prompt."""
    import time
    import urllib.request

    from openai import OpenAI
    from transformers import AutoTokenizer

    port, model_id = free_port(), str(sft_run.out)
    server = subprocess.Popen([str(Path(sys.executable).parent / "transformers"), "serve", model_id, "--host",
                               "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, f"transformers serve exited: {server.stdout.read()[-3000:]}"
                assert time.monotonic() < deadline, "transformers serve did not answer /health within 120 s"
                time.sleep(0.5)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=60, max_retries=0)
        tok = AutoTokenizer.from_pretrained(model_id)
        (q, a), (q2, a2) = FIXED_QA
        messages = [{"role": "system", "content": FIXED_SYSTEM}, {"role": "user", "content": q}]
        r = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=40)
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert r.choices[0].message.content == a and r.choices[0].finish_reason == "stop"
        assert r.usage.prompt_tokens == len(prompt["input_ids"])  # the system prompt, through the saved template
        assert r.usage.completion_tokens == len(tok(a, add_special_tokens=False)["input_ids"]) + 1  # + </s>
        stream = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": q2}],
                                                temperature=0, max_tokens=40, stream=True)
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == a2
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # streamed, not one piece
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        cut = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": q2}],
                                             temperature=0, max_tokens=3)
        assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
        assert a2.startswith(cut.choices[0].message.content)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_packing_does_not_attend_across_samples(tiny_base, fixed_data):
    """packing + bfd (padding-free): the loss of a packed batch equals the losses of its samples computed apart."""
    from tinyllama.chat.args import parse_sft_args

    sft = load_script("recipes/sft.py")
    args = parse_sft_args(sft_cli(tiny_base, fixed_data, "/tmp/unused", "--packing", "true", "--max_length", "256",
                                  "--max_train_samples", "12"))
    trainer = sft.build_trainer(*args)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one packed row, no padding
    model = trainer.model.eval()
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
    assert len(starts) > 2  # several samples in the row
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for s, e in zip(starts[:-1], starts[1:]):
            alone = model(input_ids=batch["input_ids"][:, s:e], use_cache=False).logits[0]
            torch.testing.assert_close(packed[s:e], alone, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Mistakes a user can make: caught early, with a message that names the problem
# ---------------------------------------------------------------------------------------------------------------
def test_unknown_and_stale_config_keys_fail_with_a_hint():
    from tinyllama.chat.args import parse_dpo_args, parse_sft_args
    from tinyllama.config import ConfigError

    with pytest.raises(ConfigError) as e:  # TRL renamed max_seq_length; transformers 5 removed warmup_ratio
        parse_sft_args(["--config", "configs/chat/sft-demo.yaml", "--max_seq_length", "512", "--warmup_ratio", "0.1"])
    message = str(e.value)
    assert "unknown key 'max_seq_length'" in message and "did you mean 'max_length'" in message
    assert "unknown key 'warmup_ratio'" in message
    with pytest.raises(ConfigError, match="unknown key 'max_prompt_lenght'"):
        parse_dpo_args(["--config", "configs/chat/dpo-demo.yaml", "--max_prompt_lenght", "12"])


def test_every_chat_config_parses():
    from tinyllama.chat.args import ChatSFTConfig, parse_chat_config

    configs = sorted((REPO / "configs" / "chat").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"sft-ultrachat", "dpo-ultrafeedback", "sft-lora", "sft-qlora", "dpo-lora",
                                        "sft-demo", "dpo-demo"}
    for path in configs:
        script, train, model = parse_chat_config(path, ["--use_cpu", "true"])  # bf16 configs are for GPUs
        if path.stem.startswith("sft"):
            assert isinstance(train, ChatSFTConfig) and train.assistant_only_loss
            assert chat.has_generation_markers(chat.chat_template_from(script.chat_template))
    s, t, m = parse_chat_config(REPO / "configs/chat/sft-ultrachat.yaml", ["--use_cpu", "true"])
    assert (t.learning_rate, t.num_train_epochs, t.max_length, t.per_device_train_batch_size,
            t.gradient_accumulation_steps, str(t.lr_scheduler_type.value)) == (2e-5, 1, 2048, 32, 2, "cosine")
    assert m.model_name_or_path == "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"
    s, t, m = parse_chat_config(REPO / "configs/chat/dpo-ultrafeedback.yaml", ["--use_cpu", "true"])
    assert (t.beta, t.learning_rate, t.num_train_epochs, t.max_length, s.max_prompt_length,
            t.per_device_train_batch_size, t.warmup_steps) == (0.1, 5e-7, 3, 1024, 512, 8, 0.1)
    s, t, m = parse_chat_config(REPO / "configs/chat/sft-qlora.yaml", ["--use_cpu", "true"])
    assert (m.load_in_4bit, m.bnb_4bit_quant_type, m.use_bnb_nested_quant, m.dtype, m.lora_r, m.lora_alpha,
            m.lora_dropout, m.lora_target_modules) == (True, "nf4", True, "bfloat16", 64, 16, 0.1, "all-linear")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_qlora_without_cuda_stops_with_a_clear_message(tmp_path):
    result = run("recipes/sft.py", "--config", "configs/chat/sft-qlora.yaml", "--output_dir", str(tmp_path / "q"))
    assert result.returncode == 2
    assert "load_in_4bit (QLoRA) needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "q").exists()


def test_hub_token_in_config_is_refused():
    with pytest.raises(ValueError, match="HF_TOKEN"):
        chat.precheck_argv(["--config", "configs/chat/sft-demo.yaml", "--hub_token", HUB_SECRET])


def test_bad_rows_are_reported_with_dataset_split_and_row():
    from datasets import Dataset

    rows = ultrachat_rows(4)
    rows[2]["messages"] = [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(ValueError, match=r"'my/chats' split 'train_sft'.*\n  row 2: message 0 has role 'human'"):
        chat.prepare_sft_dataset(Dataset.from_list(rows), "my/chats", "train_sft")
    rows = ultrachat_rows(3)
    rows[1]["messages"] = [{"role": "user", "content": "only a question"}]
    with pytest.raises(ValueError, match="row 1: no assistant message"):
        chat.prepare_sft_dataset(Dataset.from_list(rows), "my/chats", "train_sft")
    good = chat.prepare_sft_dataset(Dataset.from_list(ultrachat_rows(3)), "my/chats", "train_sft")
    assert good.column_names == ["messages"]  # UltraChat's prompt string would make TRL see prompt-completion data
    with pytest.raises(ValueError, match="no 'messages' column"):
        chat.prepare_sft_dataset(Dataset.from_list([{"text": "x"}]), "my/chats", "train_sft")

    prefs = ultrafeedback_rows(3)
    prefs[1]["rejected"] = [{"role": "user", "content": "another question"}, prefs[1]["rejected"][1]]
    with pytest.raises(ValueError, match="'my/prefs' split 'train_prefs' row 1: 'chosen' and 'rejected' have "
                                         "different prompts"):
        chat.prepare_preference_dataset(Dataset.from_list(prefs), "my/prefs", "train_prefs")
    formatted = chat.prepare_preference_dataset(Dataset.from_list(ultrafeedback_rows(2)), "my/prefs", "train_prefs")
    row = formatted[0]
    assert set(formatted.column_names) == {"prompt", "chosen", "rejected"}
    assert [m["role"] for m in row["prompt"]] == ["user"] and [m["role"] for m in row["chosen"]] == ["assistant"]


def test_model_source_and_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found: outputs/does-not-exist"):
        chat.check_model_source("outputs/does-not-exist")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="is a LoRA adapter.*merge_lora.py"):
        chat.check_model_source(str(adapter))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        chat.resolve_resume("last", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        chat.resolve_resume(str(tmp_path / "checkpoint-7"), str(tmp_path))
    (tmp_path / "checkpoint-7").mkdir()  # killed while saving: no trainer_state.json, never resumed from
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        chat.resolve_resume("last", str(tmp_path))
    (tmp_path / "checkpoint-7" / "trainer_state.json").write_text("{}")
    assert chat.resolve_resume("last", str(tmp_path)) == str(tmp_path / "checkpoint-7")
    chat.check_model_source("TinyLlama/TinyLlama_v1.1")  # a Hub id is left to from_pretrained


@pytest.mark.slow
def test_demo_configs_run_from_a_fresh_checkout(tmp_path):
    """The demo configs through the recipes' entry points (the scripts themselves run as processes in the QLoRA
    and chat tests); the fixtures under data/demo/chat are built on first use."""
    sft_out, dpo_out = tmp_path / "sft-demo", tmp_path / "dpo-demo"
    load_script("recipes/sft.py").main([
        "--config", "configs/chat/sft-demo.yaml", "--output_dir", str(sft_out), "--max_steps", "2",
        "--max_train_samples", "32", "--max_eval_samples", "8", "--save_strategy", "'no'"])
    assert (REPO / "data/demo/chat/ultrachat_200k/data/train_sft-00000-of-00001.parquet").is_file()
    assert (sft_out / "model.safetensors").is_file() and (sft_out / "chat_template.jinja").is_file()
    metrics = load_script("recipes/dpo.py").main([
        "--config", "configs/chat/dpo-demo.yaml", "--model_name_or_path", str(sft_out), "--output_dir",
        str(dpo_out), "--max_steps", "2", "--max_train_samples", "16", "--max_eval_samples", "8",
        "--save_strategy", "'no'"])
    assert "eval_rewards/accuracies" in metrics and (dpo_out / "model.safetensors").is_file()
    assert "eval_rewards/accuracies" in (dpo_out / "README.md").read_text()


def test_run_summary_is_written_and_read_by_the_pipeline_table(sft_run):
    """Like pretraining, the chat recipes end with summary.json; the pipeline's table reads it (not the log)."""
    import json

    from tinyllama.pipeline.summary import summary_rows

    summary = json.loads((sft_run.out / "summary.json").read_text())
    assert summary["step"] == 60 == sft_run.metrics["train_steps"]
    assert summary["final_loss"] == sft_run.metrics["train_loss"] and summary["metrics"]["eval_loss"] > 0
    stage = SimpleNamespace(name="sft", spec=SimpleNamespace(recipe="sft"), run_dir=sft_run.out, state="done",
                            reason="")
    (row,) = summary_rows([stage], {})
    assert (row["steps"], row["final_loss"]) == (60, sft_run.metrics["train_loss"])
