"""The README is a short guide whose example runs and whose model table is the cards', and the code stays in small
pieces (the limits a newcomer can read)."""

from __future__ import annotations

import ast
import re
import shutil

import pytest
from support.films import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_the_readme_is_a_short_guide_whose_links_resolve():
    assert len(README.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (REPO_ROOT / target).exists(), target
    for page in (REPO_ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_readme_model_table_is_the_one_the_cards_give():
    from cxrdistill.release.table import models_table

    assert models_table(REPO_ROOT / "models") in README


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    from cxrdistill.examples import example_path

    shutil.copy(example_path(), tmp_path / "chest.dcm")
    (tmp_path / "models").symlink_to(REPO_ROOT / "models")
    monkeypatch.chdir(tmp_path)
    code = re.search(r"## In Python\n\n```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["record"]["answer"]["state"] in ("low", "indeterminate", "signal")


def _python_files():
    yield REPO_ROOT / "app.py"
    for folder in ("cxrdistill", "train"):
        yield from sorted((REPO_ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", list(_python_files()), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_files_and_functions_stay_small(path):
    source = path.read_text()
    limit = 300 if path.name == "app.py" and path.parent == REPO_ROOT else 600
    assert len(source.splitlines()) <= limit, f"{path.name}: {len(source.splitlines())} lines (limit {limit})"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, f"functions over 80 lines: {long}"
