"""The floors of the house: imports only run downward (docs/architecture.md).

invlab (ground) <- models, augment <- eval <- train. Read from the source files (every import,
also those inside functions), so a late import that runs back up fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("invlab", "models", "augment", "eval", "train")
# What each package may import of the project (itself always).
ALLOWED = {
    "invlab": set(),
    "models": {"invlab"},
    "augment": {"invlab"},
    "eval": {"invlab", "models", "augment"},
    "train": {"invlab", "models", "augment", "eval"},
}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool, top_level_only: bool = False) -> set[str]:
    """Absolute names of the project modules a source file imports (relative ones resolved);
    ``top_level_only``: only the imports that run when the module is imported."""
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return {n for n in found if n.split(".")[0] in PACKAGES}


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _file_imports(module: str, path: Path, top_level_only: bool = False) -> set[str]:
    return imports(path.read_text(), module, path.name == "__init__.py", top_level_only)


def test_every_package_imports_only_downward() -> None:
    wrong = []
    for module, path in _sources().items():
        own = module.split(".")[0]
        for name in sorted(_file_imports(module, path)):
            target = name.split(".")[0]
            if target != own and target not in ALLOWED[own]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "imports that run up a floor:\n" + "\n".join(wrong)


def test_no_import_circle_between_modules() -> None:
    """No cycle among the imports that run at import time (a package's ``__init__`` exposing its
    own submodules is not a circle)."""
    sources = _sources()
    graph = {
        module: {
            n
            for n in _file_imports(module, path, top_level_only=True)
            if n in sources and n != module and not module.startswith(n + ".")
        }
        for module, path in sources.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_the_reader_sees_late_and_relative_imports() -> None:
    """Else the tests above would pass vacuously."""
    late = "def f():\n    from train.config import load_config\n"
    assert "train.config" in imports(late, "models.x", is_package=False)
    assert "train.config" not in imports(late, "models.x", False, top_level_only=True)
    relative = "from .antialias import antialias\nfrom ..invlab import config\n"
    names = imports(relative, "models.factory", is_package=False)
    assert {"models.antialias", "models.antialias.antialias", "invlab.config"} <= names
