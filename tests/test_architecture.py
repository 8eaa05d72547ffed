"""The layering rules of ARCHITECTURE.md, and the README / CI contract."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from support.films import REPO_ROOT

PACKAGE = REPO_ROOT / "cxrdistill"


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_library_never_imports_app_training_or_ui_packages():
    forbidden = ("gradio", "accelerate", "train", "cxrdistill_train", "app")
    for path in PACKAGE.rglob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in forbidden, f"{path.relative_to(REPO_ROOT)} imports {name}"


def test_data_never_imports_models():
    for path in (PACKAGE / "data").rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith("cxrdistill.models"), f"{path.relative_to(REPO_ROOT)} imports {name}"


def test_models_never_import_the_hub_publishing_or_release_modules():
    for path in (PACKAGE / "models").rglob("*.py"):
        for name in _imports(path):
            assert name not in ("cxrdistill.hub", "cxrdistill.release", "cxrdistill.inference"), (
                f"{path.relative_to(REPO_ROOT)} imports {name}"
            )


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the cxrdistill modules it imports anywhere in its body (in functions too: a lazy import is still a
    dependency). ``from package import name`` counts as importing the submodule where ``name`` is one."""
    modules = {
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    edges.add(submodule if submodule in modules else node.module)
        graph[module] = {edge for edge in edges if edge in modules and edge != module}
    return graph


def test_the_library_has_no_import_cycle():
    graph = _module_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_importing_the_library_loads_no_ui_or_trainer():
    code = (
        "import sys, cxrdistill, cxrdistill.data, cxrdistill.io, cxrdistill.labels, cxrdistill.cli, "
        "cxrdistill.models, cxrdistill.hub; "
        "print(sorted(m for m in ('gradio', 'accelerate') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^(pip install .+)$", readme, flags=re.MULTILINE)
    assert len(commands) == 2, f"the README must give exactly two set-up commands, found {commands}"
    install, test = next(c for c in commands if "pytest" in c).split(" && ")
    ci_lines = [line.strip() for line in ci.splitlines()]
    assert install in ci_lines and test in ci_lines
    assert ci_lines.index(install) < ci_lines.index(test)


def test_every_package_is_installed():
    """pyproject lists its packages by hand (train/ installs as cxrdistill_train): a new subpackage must be added."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {
        "cxrdistill": REPO_ROOT / "cxrdistill",
        "cxrdistill_train": REPO_ROOT / setuptools["package-dir"]["cxrdistill_train"],
    }
    found = {
        ".".join([name, *init.parent.relative_to(root).parts])
        for name, root in folders.items()
        for init in root.rglob("__init__.py")
    }
    assert found == listed, f"packages on disk {sorted(found)} != pyproject's {sorted(listed)}"
