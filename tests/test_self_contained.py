"""The repository never points outside itself: no path to a sibling or absolute working folder, no issue number of
a tracker a reader cannot see. TinyLlama's published facts live in docs/reference.md, and what cites them names it."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

OUTSIDE = re.compile(r"\.\./shared|/work/|TINYLLAMA\.md|\bissues? ?#?\d")


def tracked_text_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in out.splitlines():
        path = REPO / name
        if path.suffix in {".png", ".jpg", ".model", ".bin", ".safetensors"} or not path.is_file():
            continue
        try:
            yield name, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def test_no_reference_outside_the_repository():
    bad = []
    for name, text in tracked_text_files():
        for lineno, line in enumerate(text.splitlines(), 1):
            # TinyLlama's own tracker is fine when cited by its full address
            if OUTSIDE.search(re.sub(r"https://github\.com/\S+", "", line)) and name != "tests/test_self_contained.py":
                bad.append(f"{name}:{lineno}: {line.strip()[:120]}")
    assert not bad, "references outside the repository:\n" + "\n".join(bad)


def test_reference_sections_cited_exist():
    """Every `docs/reference.md, "Section"` citation names a section that docs/reference.md has."""
    headings = [ln[3:].strip() for ln in (REPO / "docs/reference.md").read_text().splitlines() if ln.startswith("## ")]
    cited = set()
    for name, text in tracked_text_files():
        if name in ("docs/reference.md", "tests/test_self_contained.py"):
            continue
        flat = re.sub(r"\s*\n\s*#?\s*", " ", text)  # citations wrap over comment lines
        cited |= {(name, m) for m in re.findall(r'reference\.md`?,? "([^"]+)"', flat)}
    assert cited, "no citation found: the pattern is wrong"
    missing = [(name, section) for name, section in cited if not any(h.startswith(section) for h in headings)]
    assert not missing, f"citations of sections docs/reference.md does not have: {missing}"
