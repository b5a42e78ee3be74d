"""The package installs whole: every folder under tinyllama/ is a regular package that a non-editable install
(setuptools' find_packages, as pyproject.toml configures it) ships, and the training and chat packages' names
import."""

import subprocess
import sys
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parent.parent


def test_every_tinyllama_folder_with_code_is_a_package_the_wheel_ships():
    shipped = set(find_packages(str(REPO), include=["tinyllama*"]))
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "tinyllama").rglob("*.py")}
    assert folders <= shipped, f"not shipped (no __init__.py): {sorted(folders - shipped)}"


def test_training_package_exports_resolve_to_their_modules():
    import tinyllama.training as training
    from tinyllama.training import core, make_accelerator

    assert make_accelerator is core.make_accelerator
    for name in training.__all__:
        assert getattr(training, name) is not None


def test_chat_package_exports_without_torch_or_trl():
    """``tinyllama.chat`` re-exports its modules' names (``from tinyllama.chat import X`` as before the split) and
    importing it loads none of the heavy libraries: scripts/chat.py must start fast, and only ``tinyllama.chat.args``
    imports TRL."""
    code = ("import sys, tinyllama.chat as chat\n"
            "heavy = [m for m in ('torch', 'trl', 'transformers', 'datasets') if m in sys.modules]\n"
            "print(heavy, 'tinyllama.chat.args' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] False", out

    import tinyllama.chat as chat
    from tinyllama.chat import ZEPHYR_CHAT_TEMPLATE, setup_tokenizer, template

    assert setup_tokenizer is template.setup_tokenizer and ZEPHYR_CHAT_TEMPLATE is template.ZEPHYR_CHAT_TEMPLATE
    modules = {name: getattr(chat, name).__module__ for name in chat.__all__ if callable(getattr(chat, name))}
    assert all(m.startswith("tinyllama.chat.") for m in modules.values()), modules
    assert not (REPO / "tinyllama" / "chat.py").exists() and not (REPO / "tinyllama" / "chat_args.py").exists()
