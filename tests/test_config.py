"""The config system: defaults < YAML < command line; every problem reported at once, naming the file."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from tinyllama.config import ConfigError, config_to_dict, parse_config


@dataclass
class Train:
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    steps: int = 10
    micro_batch_size: int = 2
    global_batch_size: int = 8
    name: str = "run"
    schedule: Literal["cosine", "wsd"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.95)
    mixture: dict = field(default_factory=lambda: {"a": 1.0})
    tags: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    compile: bool = False

    def validate(self) -> list[str]:
        errors = []
        if self.lr <= 0:
            errors.append(f"lr must be positive, got {self.lr}")
        if self.global_batch_size % self.micro_batch_size:
            errors.append(f"global_batch_size {self.global_batch_size} is not divisible by "
                          f"micro_batch_size {self.micro_batch_size}")
        return errors


@dataclass
class Model:
    model_config: str = "tiny"
    hub_token: Optional[str] = None


def write(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_precedence_defaults_then_yaml_then_command_line(tmp_path):
    cfg = write(tmp_path, "lr: 3e-4\nsteps: 5\nname: from-yaml\nmodel_config: demo\n")
    train, model = parse_config([Train, Model], ["--config", cfg, "--steps", "7", "--compile",
                                                 "--betas", "[0.8, 0.9]", "--mixture={b: 2}"])
    assert train.lr == 3e-4  # YAML reads 3e-4 as a string; coerced to float
    assert train.steps == 7 and train.name == "from-yaml" and train.compile is True
    assert train.betas == (0.8, 0.9) and train.mixture == {"b": 2}
    assert train.micro_batch_size == 2  # default
    assert model.model_config == "demo"


def test_default_config_is_used_without_config_flag(tmp_path):
    cfg = write(tmp_path, "steps: 3\n")
    (train,) = parse_config(Train, [], default_config=cfg)
    assert train.steps == 3


def test_every_error_at_once_naming_the_file(tmp_path):
    cfg = write(tmp_path, "lrr: 1.0\nsteps: many\nschedule: linear\nlr: -1\nglobal_batch_size: 7\n"
                          "micro_batch_size: 2\nbetas: [0.9]\n")
    with pytest.raises(ConfigError) as info:
        parse_config([Train, Model], ["--config", cfg, "--unknown-flag", "1"])
    msg = str(info.value)
    assert cfg in msg
    assert "unknown key 'lrr'" in msg and "did you mean 'lr'?" in msg
    assert "unknown key 'unknown_flag' (command line)" in msg
    assert "'steps'" in msg and "expected an integer, got 'many'" in msg
    assert "'schedule'" in msg and "'cosine'" in msg
    assert "'betas'" in msg
    # validate() runs on what did parse, and its messages join the rest
    assert "lr must be positive" in msg and "not divisible by micro_batch_size 2" in msg
    assert len(info.value.errors) == 7


def test_the_message_is_headed_with_where_the_mistakes_are(tmp_path):
    """A bad value given on the command line beside a good config file: the header names the command line, not the
    file (a user would look for the mistake in the YAML); a cross-field problem names both."""
    cfg = write(tmp_path, "lr: 1.0e-3\nsteps: 5\n")
    with pytest.raises(ConfigError) as info:
        parse_config(Train, ["--config", cfg, "--steps", "many"])
    assert info.value.source == "command line" and "invalid configuration (command line)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config(Train, ["--config", write(tmp_path, "steps: many\n", "both.yaml"), "--steps", "x"])
    assert info.value.source.endswith("both.yaml and command line")
    with pytest.raises(ConfigError) as info:
        parse_config(Train, ["--config", cfg, "--global_batch_size", "7"])
    assert info.value.source == f"{cfg} and command line" and "not divisible" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config(Train, ["--config", write(tmp_path, "global_batch_size: 7\n", "file.yaml")])
    assert info.value.source.endswith("file.yaml")


def test_wrong_type_from_command_line_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="'steps' \\(command line\\): expected an integer"):
        parse_config(Train, ["--steps", "1.5"])
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        parse_config(Train, ["--config", write(tmp_path, "- a\n- b\n")])
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config(Train, ["--config", write(tmp_path, "a: [1,\n")])
    with pytest.raises(FileNotFoundError, match="config file not found: .*nope.yaml"):
        parse_config(Train, ["--config", str(tmp_path / "nope.yaml")])


def test_env_mapping_and_help(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TL_TEST_VAR", raising=False)
    parse_config(Train, ["--config", write(tmp_path, "env:\n  TL_TEST_VAR: x\n")])
    import os

    assert os.environ["TL_TEST_VAR"] == "x"
    with pytest.raises(SystemExit) as e:
        parse_config(Train, ["--help"])
    assert e.value.code == 0 and "peak learning rate" in capsys.readouterr().out


def test_resolved_config_never_holds_the_hub_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    d = config_to_dict(Train(name="x-hf_secretsecretsecret"), Model(hub_token="hf_secretsecretsecret"))
    assert "hub_token" not in d and "hf_secret" not in str(d) and d["lr"] == 1e-3


def test_base_inheritance_child_wins_relative_to_the_child(tmp_path):
    (tmp_path / "parents").mkdir()
    write(tmp_path / "parents", "lr: 3e-4\nsteps: 5\nname: parent\nmixture: {a: 1, b: 2}\ntags: [x]\n", "root.yaml")
    write(tmp_path / "parents", "base: root.yaml\nsteps: 6\nname: middle\n", "middle.yaml")
    child = write(tmp_path, "base: parents/middle.yaml\nname: child\nmixture: {c: 1}\n", "child.yaml")
    train, _ = parse_config([Train, Model], ["--config", child, "--steps", "9"])
    assert train.lr == 3e-4 and train.tags == ["x"]  # from the grandparent
    assert train.name == "child" and train.mixture == {"c": 1}  # the child's keys replace the parent's, whole
    assert train.steps == 9  # the command line still wins
    (train2, _) = parse_config([Train, Model], ["--config", child])
    assert train2.steps == 6  # the middle file beat the root
    assert "base" not in config_to_dict(train2)
    # a list of bases merges in order
    write(tmp_path, "steps: 7\nname: other\n", "other.yaml")
    both = write(tmp_path, "base: [parents/middle.yaml, other.yaml]\n", "both.yaml")
    (train3, _) = parse_config([Train, Model], ["--config", both])
    assert (train3.steps, train3.name, train3.lr) == (7, "other", 3e-4)


def test_base_cycles_and_missing_parents_are_named(tmp_path):
    a = write(tmp_path, "base: b.yaml\nsteps: 1\n", "a.yaml")
    write(tmp_path, "base: a.yaml\nsteps: 2\n", "b.yaml")
    with pytest.raises(ConfigError, match="'base' cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        parse_config(Train, ["--config", a])
    with pytest.raises(ConfigError, match="'base' cycle"):
        parse_config(Train, ["--config", write(tmp_path, "base: self.yaml\n", "self.yaml")])
    missing = write(tmp_path, "base: nope.yaml\n", "m.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml \\(the base of .*m.yaml\\)"):
        parse_config(Train, ["--config", missing])
    with pytest.raises(ConfigError, match="'base' must be a path"):
        parse_config(Train, ["--config", write(tmp_path, "base: {x: 1}\n", "bad.yaml")])


def test_yaml_no_and_yes_mean_the_word_for_string_and_choice_fields(tmp_path):
    import enum

    class Strategy(enum.Enum):
        NO = "no"
        STEPS = "steps"

    @dataclass
    class Eval:
        eval_strategy: Strategy = Strategy.STEPS
        note: str = "x"
        flag: bool = True

    cfg = write(tmp_path, "eval_strategy: no\nnote: yes\nflag: no\n")
    (e,) = parse_config(Eval, ["--config", cfg])
    assert e.eval_strategy is Strategy.NO and e.note == "yes" and e.flag is False
    (e,) = parse_config(Eval, ["--eval_strategy", "no"])
    assert e.eval_strategy is Strategy.NO


def test_no_means_the_word_for_literal_choices_in_a_file_and_on_the_command_line(tmp_path):
    """``mixed_precision: Literal["no", "bf16", "fp16"]``: ``--mixed_precision no`` is the word, not False."""
    from tinyllama.training.args import PretrainArgs

    @dataclass
    class Precision:
        mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
        flags: Literal[True, False, "auto"] = "auto"  # a choice that holds booleans keeps them

    (p,) = parse_config(Precision, ["--mixed_precision", "no", "--flags", "no"])
    assert p.mixed_precision == "no" and p.flags is False
    (p,) = parse_config(Precision, ["--config", write(tmp_path, "mixed_precision: no\n")])
    assert p.mixed_precision == "no"
    with pytest.raises(ConfigError, match="'mixed_precision' \\(command line\\): expected one of"):
        parse_config(Precision, ["--mixed_precision", "yes"])
    (args,) = parse_config(PretrainArgs, ["--model_config", "tiny", "--mixed_precision", "no"])
    assert args.mixed_precision == "no"
