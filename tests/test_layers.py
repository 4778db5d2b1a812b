"""The layers point down (README "Architecture"): the import-linter contract in pyproject.toml,
and no import of our own modules inside a function (which would hide an upward import from a
reader, though not from import-linter)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("msa_jax", "pallas_kernels")


def test_layers_contract_is_kept():
  exe = shutil.which("lint-imports") or pytest.fail("import-linter is not installed "
                                                    "(requirements-test.txt)")
  proc = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "1 kept, 0 broken" in proc.stdout


def _inner_imports(path: Path):
  """(line, module) of every import of our packages inside a function or class body."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      continue
    for inner in ast.walk(node):
      names = ([inner.module or ""] if isinstance(inner, ast.ImportFrom) and not inner.level
               else [a.name for a in inner.names] if isinstance(inner, ast.Import) else [])
      if isinstance(inner, ast.ImportFrom) and inner.level:
        names = ["(relative)"]
      for name in names:
        if name.split(".")[0] in PACKAGES or name == "(relative)":
          yield inner.lineno, name


def test_no_function_level_imports_of_our_modules():
  found = [f"{p.relative_to(ROOT)}:{line}: {name}"
           for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
           for line, name in _inner_imports(p)]
  assert not found, "imports inside functions (move them to the top):\n" + "\n".join(found)


def test_the_contract_catches_an_upward_import(tmp_path):
  """A copy of the contract over a tree with one upward import is reported broken."""
  exe = shutil.which("lint-imports") or pytest.fail("import-linter is not installed")
  for package in PACKAGES:
    shutil.copytree(ROOT / package, tmp_path / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
  (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
  rope = tmp_path / "msa_jax" / "model" / "rope.py"
  rope.write_text(rope.read_text() + "\nfrom msa_jax.train import loop  # upward\n")
  proc = subprocess.run([exe, "--config", str(tmp_path / "pyproject.toml")], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300, check=False,
                        env={"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)})
  assert proc.returncode != 0
  assert "msa_jax.model.rope -> msa_jax.train.loop" in proc.stdout
