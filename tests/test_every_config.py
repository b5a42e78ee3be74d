"""Every YAML shipped under configs/ (and evaluation/) parses with the parser of the entry point that reads it,
so no shipped recipe can rot. A YAML that no parser claims fails the test: add its parser here."""

import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _parsers():
    """(glob relative to the repo, function that parses the file and raises on a problem)."""
    return [
        ("configs/data/*.yaml", lambda p: __import__("tinyllama.data.prepare", fromlist=["_"]).load_config(p)),
    ]


YAMLS = sorted(p for d in ("configs", "evaluation") for p in (REPO / d).rglob("*.y*ml"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_parses(path):
    rel = str(path.relative_to(REPO))
    for pattern, parse in _parsers():
        if fnmatch.fnmatch(rel, pattern):
            parse(path)
            return
    pytest.fail(f"no parser claims {rel}: add one to tests/test_every_config.py")
