"""Recipe configuration: one YAML file per run, parsed into typed dataclasses.

Precedence: dataclass defaults < YAML (``--config FILE``) < command line (``--key value``).

The dataclasses are built by transformers' ``HfArgumentParser.parse_dict`` (the same parser that TRL's
``TrlParser`` extends, so a TRL config such as ``SFTConfig`` works unchanged, and a YAML may carry TrlParser's
``env:`` mapping). What the ecosystem's parsers do not do is written here: they stop at the first bad value and
take YAML values without checking their types, while a run that costs thousands of GPU-hours should hear about
*every* unknown key, wrong type and impossible value at once, naming the file, before any work starts.

A dataclass may define ``validate(self) -> list[str]`` for cross-field checks (e.g. global batch divisible by
micro batch x processes); its messages are collected with the rest.

Derived configs: a YAML may start with ``base: parent.yaml`` (a path relative to the YAML itself, or a list of
them, merged in order). The parent is read first (its own ``base`` too), then the child's keys replace the
parent's, whole: a child's ``mixture`` replaces the parent's mixture, it is not merged into it. A ``base`` cycle is
an error. So a cooldown config states only what differs from its continual stage (``configs/cooldown/*.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from . import environment


class ConfigError(ValueError):
    """Every problem found in a run's configuration, in one message."""

    def __init__(self, source: str, errors: Sequence[str]):
        self.source = source
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"invalid configuration ({source}): {len(self.errors)} problem(s)\n{lines}")


BASE_KEY = "base"


def load_yaml(path: str | os.PathLike, inherit: bool = True) -> dict:
    """Read a YAML mapping, with a clear error for a missing file, bad YAML or a non-mapping.

    With ``inherit`` (the default) a top-level ``base: parent.yaml`` (or a list of parents) is resolved: the
    parents' keys first, the child's keys win (see the module docstring)."""
    return _load_yaml(Path(path), inherit, ())


def _load_yaml(path: Path, inherit: bool, chain: tuple[Path, ...]) -> dict:
    if not path.is_file():
        child = f" (the base of {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"config file not found: {path}{child}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"must be a YAML mapping of key: value, got {type(data).__name__}"])
    if not inherit or BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    parents = [base] if isinstance(base, str) else base
    if not isinstance(parents, list) or not parents or not all(isinstance(b, str) and b for b in parents):
        raise ConfigError(str(path), [f"'{BASE_KEY}' must be a path (relative to this file) or a list of paths, "
                                      f"got {base!r}"])
    here = path.resolve()
    merged: dict = {}
    for parent in parents:
        parent_path = Path(parent) if Path(parent).is_absolute() else path.parent / parent
        if parent_path.resolve() in chain + (here,):
            cycle = " -> ".join(str(p) for p in chain + (here, parent_path.resolve()))
            raise ConfigError(str(path), [f"'{BASE_KEY}' cycle: {cycle}"])
        merged.update(_load_yaml(parent_path, inherit, chain + (here,)))
    merged.update(data)
    return merged


def split_cli(args: Sequence[str]) -> tuple[str | None, dict[str, Any], list[str]]:
    """Split ``[--config FILE] [--key value | --key=value | --flag] ...`` into (config path, overrides, errors).

    Values are read as YAML scalars/flow collections, so ``--lr 3e-4``, ``--betas [0.9,0.95]`` and
    ``--mixture '{a: 1}'`` all work; types are checked afterwards against the dataclass fields.
    """
    config, overrides, errors = None, {}, []
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            errors.append(f"unexpected command-line argument {arg!r} (expected --key value)")
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"  # a bare --flag
        i += 1
        if key == "config":
            config = value
            continue
        try:
            overrides[key] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            overrides[key] = value
    return config, overrides, errors


# ----------------------------------------------------------------------------------------------------------------
# Type coercion: accept what the field's annotation accepts, convert the obvious (YAML reads 1e-4 as a string,
# an int where a float is expected), report the rest.
# ----------------------------------------------------------------------------------------------------------------
class _Mismatch(Exception):
    pass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to annotation ``tp``; raise ``_Mismatch`` if it cannot be."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        for member in args:
            if member is type(None):
                continue
            try:
                return coerce(value, member)
            except _Mismatch:
                continue
        raise _Mismatch(" or ".join(_type_name(a) for a in args if a is not type(None)))
    if isinstance(value, bool) and (tp is str or origin is typing.Literal and bool not in map(type, args)
                                    or isinstance(tp, type) and issubclass(tp, enum.Enum)):
        # YAML 1.1 reads an unquoted no/yes/off/on as a boolean (in a file and in ``--key value`` alike): for a
        # string or choice field, the word was meant
        for word in (("no", "false", "off") if value is False else ("yes", "true", "on")):
            try:
                return coerce(word, tp)
            except _Mismatch:
                continue
    if origin is typing.Literal:
        if value in args:
            return value
        raise _Mismatch("one of " + ", ".join(repr(a) for a in args))
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            inner = args[0] if args else Any
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise _Mismatch(f"a list of {len(args)} values")
                return tuple(coerce(v, a) for v, a in zip(value, args))
            out = [coerce(v, inner) for v in value]
            return tuple(out) if origin is tuple else out
        if isinstance(value, str) and origin is list and args and args[0] is str:
            return [value]  # --key value for a list of strings
        raise _Mismatch("a list")
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch("a mapping")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _Mismatch("one of " + ", ".join(repr(m.value) for m in tp)) from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise _Mismatch("true or false")
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                raise _Mismatch("an integer") from None
            if f.is_integer():
                return int(f)
        raise _Mismatch("an integer")
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _Mismatch("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a revision or run name that happens to look numeric
        raise _Mismatch("a string")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch(_type_name(tp))
    return value  # an annotation we don't know how to check: leave it to the dataclass


def _fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints.get(f.name, Any)) for f in dataclasses.fields(cls) if f.init}


def missing_fields(cls: type, present: Iterable[str]) -> list[str]:
    """The fields of the dataclass ``cls`` that have no default and are not among ``present``."""
    present = set(present)
    return [name for name, (f, _) in _fields(cls).items()
            if name not in present and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def check_mapping(dataclass_types: Sequence[type] | type, mapping: dict, where: str, errors: list[str],
                  require: bool = False) -> dict:
    """The keys of ``mapping`` checked against the fields of ``dataclass_types`` and their values converted to the
    fields' annotations: returns what is valid, appends one message per unknown key (with the closest known key)
    or mistyped value to ``errors``, and with ``require`` one per field without a default that ``mapping`` lacks.
    What ``parse_config`` does for a config file, for any mapping (e.g. each stage of a pipeline file)."""
    if isinstance(dataclass_types, type):
        dataclass_types = [dataclass_types]
    fields = [_fields(cls) for cls in dataclass_types]
    known = sorted({name for fs in fields for name in fs})
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        annotations = [fs[key][1] for fs in fields if key in fs]
        if not annotations:
            hint = difflib.get_close_matches(str(key), known, n=1)
            errors.append(f"unknown key '{key}' {where}" + (f"; did you mean '{hint[0]}'?" if hint else ""))
            continue
        try:
            values[key] = coerce(value, annotations[0])
        except _Mismatch as e:
            errors.append(f"'{key}' {where}: expected {e}, got {value!r}")
    if require:
        errors.extend(f"'{name}' is required {where}" for cls in dataclass_types
                      for name in missing_fields(cls, mapping))
    return values


def optional_step(settings_type: type, value: Any, where: str, errors: list[str]) -> dict | None:
    """The value of a key that turns an optional step on with settings (``dedup:``, ``decontaminate:``), as keyword
    arguments of the dataclass ``settings_type``: absent/``false`` -> None (off), ``true`` -> ``{}`` (the defaults), a
    mapping -> its keys and values checked by :func:`check_mapping`: what is valid is returned and the problems are
    appended to ``errors``, so the caller's own checks (what types cannot express) add theirs to the same list."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, dict):
        known = ", ".join(f.name for f in dataclasses.fields(settings_type))
        errors.append(f"{where}: expected true, false or a mapping of {known}; got {value!r}")
        return None
    return check_mapping(settings_type, value, f"in {where}", errors)


# ----------------------------------------------------------------------------------------------------------------
def parse_config(
    dataclass_types: Sequence[type] | type,
    args: Sequence[str] | None = None,
    default_config: str | os.PathLike | None = None,
) -> tuple:
    """Parse ``[--config FILE] [--key value ...]`` into instances of ``dataclass_types``.

    ``default_config`` is used when no ``--config`` is given (the recipes' embedded demo). ``--help`` prints every
    field with its help text and exits. Raises ``ConfigError`` listing every problem, or ``FileNotFoundError`` for a
    missing config file. The returned tuple has one instance per type, in order.
    """
    if isinstance(dataclass_types, type):
        dataclass_types = [dataclass_types]
    args = list(sys.argv[1:] if args is None else args)
    if "-h" in args or "--help" in args:
        from transformers import HfArgumentParser

        HfArgumentParser(dataclass_types).print_help()
        raise SystemExit(0)

    config_path, overrides, errors = split_cli(args)
    config_path = config_path or (str(default_config) if default_config else None)
    from_file = load_yaml(config_path) if config_path else {}
    source = config_path or "command line"

    env = from_file.pop("env", None)
    if env is not None:
        if isinstance(env, dict):
            for k, v in env.items():
                os.environ[str(k)] = str(v)
        else:
            errors.append(f"{config_path}: 'env' must be a mapping of environment variables")

    fields = [_fields(cls) for cls in dataclass_types]
    values: dict[str, Any] = {}
    wrong_in = []  # where the unknown keys and mistyped values are: the message is headed with those
    for origin, mapping in ((config_path, from_file), ("command line", overrides)):
        n = len(errors)
        values.update(check_mapping(dataclass_types, mapping, f"({origin})", errors))
        if len(errors) > n:
            wrong_in.append(origin)

    instances = []
    for cls, fs in zip(dataclass_types, fields):
        kwargs = {k: v for k, v in values.items() if k in fs}
        missing = missing_fields(cls, kwargs)
        if missing:
            errors.extend(f"'{name}' is required ({cls.__name__})" for name in missing)
            continue
        try:
            from transformers import HfArgumentParser

            (obj,) = HfArgumentParser([cls]).parse_dict(kwargs, allow_extra_keys=False)
        except Exception as e:  # __post_init__ checks of TRL/transformers configs
            errors.append(f"{cls.__name__}: {e}")
            continue
        if hasattr(obj, "validate"):
            errors.extend(obj.validate())
        instances.append(obj)

    if errors:
        if not wrong_in and config_path and overrides:  # cross-field problems: either may hold the value
            wrong_in = [config_path, "command line"]
        raise ConfigError(" and ".join(wrong_in) or source, errors)
    return tuple(instances)


def config_to_dict(*instances, exclude: Iterable[str] = ()) -> dict:
    """The resolved config of a run, as plain YAML-able data, for ``config.yaml`` beside its outputs.

    Secrets never land here: fields that hold credentials are dropped, and any value equal to the Hub token in
    the environment is redacted.
    """
    exclude = set(exclude) | SECRET_KEYS
    out: dict[str, Any] = {}
    for obj in instances:
        items = obj.to_dict().items() if hasattr(obj, "to_dict") else dataclasses.asdict(obj).items()
        for k, v in items:
            if k in exclude or any(word in k.lower() for word in ("password", "secret", "api_key")):
                continue
            out[k] = redact(_plain(v))
    return out


SECRET_KEYS = {"hub_token", "push_to_hub_token", "token", "use_auth_token", "hf_token"}


def redact(value: Any) -> Any:
    """Replace the Hub token (from ``HF_TOKEN``) wherever it appears in ``value``."""
    secret = environment.hub_token()
    if isinstance(value, str) and secret and secret in value:
        return value.replace(secret, "<redacted>")
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    return value


def _plain(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v
