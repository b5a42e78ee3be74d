"""The structure docs/architecture.md describes is the structure of the code: the packages of tinyllama/ import
one way (each layer only from the layers below it, including imports inside functions), no module imports itself
back through others, the package imports nothing from recipes/, scripts/ or tests/, and the document names every
module."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "tinyllama"

# Lowest first. A unit is a subpackage of tinyllama/ or a top-level module; it may import from the layers below
# its own, never from its own layer (another unit) or above. docs/architecture.md ("Layers") says why each sits where.
LAYERS = [
    {"environment"},
    {"utils"},
    {"config", "attention"},
    {"model", "tokenizer"},
    {"checkpoints", "demo_corpus", "convert", "gguf_export"},
    {"evaluation"},
    {"data", "chat", "vocab"},
    {"training"},
    {"pipeline"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (at the top or inside a function), relative imports resolved; for ``from X
    import name``, ``X.name`` where that is a module of the package, else ``X``."""
    this = module_name(path)
    package = this.split(".") if path.name == "__init__.py" else this.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if module_path(sub) else target)
    return found


def module_path(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def unit(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "tinyllama" and len(parts) > 1 else None


def graph() -> dict[str, set[str]]:
    return {module_name(p): {m for m in imports(p) if m.split(".")[0] == "tinyllama" and module_path(m)}
            for p in PACKAGE.rglob("*.py")}


def test_layers_cover_every_unit_once():
    units = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    listed = [u for layer in LAYERS for u in layer]
    assert len(listed) == len(set(listed))
    assert set(listed) == units, f"add to LAYERS: {sorted(units - set(listed))}; gone: {sorted(set(listed) - units)}"


def test_packages_import_only_from_the_layers_below():
    level = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    wrong = []
    for module, targets in graph().items():
        src = unit(module)
        for target in targets:
            dst = unit(target)
            if src and dst and src != dst and level[dst] >= level[src]:
                wrong.append(f"{module} -> {target} ({src}: layer {level[src]}, {dst}: layer {level[dst]})")
    assert not wrong, "imports that run sideways or up:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_itself_back():
    """No cycle between modules, a package's edges with its own modules aside (its __init__ re-exporting them)."""
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if t.startswith(m + ".") or m.startswith(t + "."):
                continue  # a package and its own modules
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_package_never_imports_recipes_scripts_or_tests():
    for path in PACKAGE.rglob("*.py"):
        bad = {m for m in imports(path) if m.split(".")[0] in ("recipes", "scripts", "tests", "evaluation")
               or m.split(".")[0] in ("pretrain_utils", "fault_utils", "chat_helpers")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_architecture_doc_names_every_module_script_and_entry_point():
    """docs/architecture.md describes the layout as it is: every package and module of tinyllama/, every script,
    recipe and evaluation entry point, and the CI script."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    missing = []
    for package in sorted(p.parent for p in PACKAGE.rglob("__init__.py")):
        rel = package.relative_to(REPO).as_posix()
        if rel != "tinyllama" and f"`{rel}/`" not in doc:
            missing.append(f"{rel}/")
    for module in PACKAGE.rglob("*.py"):
        if not module.name.startswith("__") and f"`{module.name}`" not in doc and \
                f"`{module.relative_to(REPO).as_posix()}`" not in doc:
            missing.append(module.relative_to(REPO).as_posix())
    for folder, pattern in (("recipes", "*.py"), ("scripts", "**/*.py"), ("scripts", "**/*.sh"),
                            ("scripts", "**/*.sbatch"), ("evaluation", "*.py"), ("evaluation", "*.sh")):
        for f in (REPO / folder).glob(pattern):
            rel = f.relative_to(REPO).as_posix()
            if f"`{rel}`" not in doc and f"`{f.name}`" not in doc:
                missing.append(rel)
    if "`.ci/run`" not in doc:
        missing.append(".ci/run")
    assert not missing, "not named in docs/architecture.md: " + ", ".join(sorted(missing))


def test_no_test_hooks_in_the_package():
    """Faults are injected from outside (tests/faults/launch.py, tests/faults/site, run_inprocess): nothing in the
    package or the recipes reads a test-only variable."""
    import re

    hooks = re.compile(r"TINYLLAMA_(TEST|FAULT)\w*|TINYLLAMA_HUB_(BACKOFF|WAIT_TIMEOUT)")
    found = [f"{p.relative_to(REPO)}: {m.group(0)}" for folder in (PACKAGE, REPO / "recipes")
             for p in folder.rglob("*.py") for m in hooks.finditer(p.read_text())]
    assert not found, found


def _environment_reads(path: Path) -> list[str]:
    """Where ``path`` reads a variable: ``os.getenv(...)``, ``os.environ.get(...)``, ``os.environ[...]`` read, or
    ``... in os.environ``. Setting one for a child process, or passing the whole environment on, is not a read."""
    def is_environ(node):
        return isinstance(node, ast.Attribute) and node.attr == "environ" and \
            isinstance(node.value, ast.Name) and node.value.id == "os"

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                node.func.attr == "getenv" and isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
                or node.func.attr == "get" and is_environ(node.func.value)):
            found.append(node.lineno)
        elif isinstance(node, ast.Subscript) and is_environ(node.value) and isinstance(node.ctx, ast.Load):
            found.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            found.append(node.lineno)
    return found


def test_environment_variables_are_read_in_one_module():
    """tinyllama/environment.py reads every variable; the package, the recipes, the scripts and the evaluation
    entry points ask it. (scripts/gpu/ runs on a bare GPU machine before the package is installed: exempt.)"""
    assert _environment_reads(PACKAGE / "environment.py"), "the check itself finds nothing: it would pass vacuously"
    found = [f"{p.relative_to(REPO)}:{line}" for folder in (PACKAGE, REPO / "recipes", REPO / "scripts",
                                                            REPO / "evaluation")
             for p in sorted(folder.rglob("*.py")) if p.name != "environment.py" and "gpu" not in p.parts
             for line in _environment_reads(p)]
    assert not found, "read tinyllama.environment instead: " + ", ".join(found)


def test_no_private_name_crosses_a_module():
    """A name with a leading underscore stays in its module: no ``from .x import _name`` between this project's
    modules (the package, recipes, scripts, evaluation entry points), and so no private re-exports either. What
    another module needs is public, with a docstring saying what it is for."""
    found = []
    for folder in (PACKAGE, REPO / "recipes", REPO / "scripts", REPO / "evaluation"):
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in (
                        "tinyllama", "benchmark_data", "pretrain_utils")):
                    found += [f"{path.relative_to(REPO)}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "private names imported across modules: " + ", ".join(found)
