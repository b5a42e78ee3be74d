"""The package installs whole: every folder under tinyllama/ is a regular package that a non-editable install
(setuptools' find_packages, as pyproject.toml configures it) ships, and the training package's names import."""

from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parent.parent


def test_every_tinyllama_folder_with_code_is_a_package_the_wheel_ships():
    shipped = set(find_packages(str(REPO), include=["tinyllama*"]))
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "tinyllama").rglob("*.py")}
    assert folders <= shipped, f"not shipped (no __init__.py): {sorted(folders - shipped)}"


def test_training_package_exports_resolve_to_their_modules():
    import tinyllama.training as training
    from tinyllama.training import checkpoint, export_checkpoint

    assert export_checkpoint is checkpoint.export_checkpoint
    for name in training.__all__:
        assert getattr(training, name) is not None
