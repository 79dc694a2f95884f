"""The import layers (pyproject.toml, [tool.importlinter]) hold on the tree, every module has
its place in them, and lint-imports refuses a copy of the tree with one import that breaks
them (imports inside functions included)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts on the packages under `tree`."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(PYPROJECT)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


def imports_anything(path: Path) -> bool:
    return any(isinstance(node, ast.Import | ast.ImportFrom) for node in ast.walk(ast.parse(path.read_text())))


def test_every_module_has_its_layer():
    """A new module is placed in the layers (else nothing holds it to them); a package's
    __init__.py that imports nothing needs no place."""
    (layers,) = [contract["layers"] for contract in CONTRACTS if contract["type"] == "layers"]
    placed = {name.strip().strip("()") for layer in layers for name in re.split(r"[|:]", layer)}
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for package in ("app", "worker")
        for path in (ROOT / package).rglob("*.py")
    }
    assert len(modules) > 40
    unplaced = [
        module
        for module, path in sorted(modules.items())
        if not any(module == name or module.startswith(f"{name}.") for name in placed)
        and (path.name != "__init__.py" or imports_anything(path))
    ]
    assert unplaced == [], "give each its layer in pyproject.toml [tool.importlinter]"


# (file, what is added to it, the import lint-imports must name)
UPWARD = [
    ("app/models/user.py", "from app.api import StrictSchema\n", "app.models.user -> app.api"),
    ("app/errors.py", "\n\ndef _count():\n    from app import metrics\n", "app.errors -> app.metrics"),
    ("app/users/service.py", "from app.users import routes\n", "app.users.service -> app.users.routes"),
    ("app/db.py", "from app import config\n", None),  # downward: allowed
    ("app/queue.py", "import worker.tasks\n", "app.queue -> worker.tasks"),
    ("worker/tasks.py", "from app.db import db\n", "worker.tasks -> app.db"),
]


@pytest.mark.parametrize(("path", "added", "named"), UPWARD, ids=[f"{p}: {a.split()[-1]}" for p, a, _ in UPWARD])
def test_lint_imports_refuses_an_upward_import(tmp_path, path, added, named):
    for package in ("app", "worker"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    changed = tmp_path / path
    changed.write_text(changed.read_text() + added)
    result = lint_imports(tmp_path)
    if named is None:
        assert result.returncode == 0, result.stdout + result.stderr
        return
    assert result.returncode != 0
    assert named in result.stdout, result.stdout + result.stderr
