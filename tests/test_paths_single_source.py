"""``components/paths.py`` is the only module that names a project file (DESIGN: "no module but
``paths.py`` joins a project path"): the source of components/ and flows/ is scanned for file names
and path joins written anywhere else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("components", "flows")
SINGLE_SOURCE = REPO / "components" / "paths.py"
# a whitespace-free string that ends like a file the project keeps: "gate.json", "*.jsonl", ".result.json"
FILE_NAME = re.compile(r"\A\S*\.(json|jsonl|yaml|yml|lock|md|csv|txt)\Z")
# names that are no project file: folders of a temporary directory, a file format a user's data comes in
NOT_PROJECT_PATHS = {
    ("components/modeling/fetch.py", "gguf"): "the temporary directory the wheel is unpacked into",
    ("components/modeling/fetch.py", "model"): "the temporary directory the model is converted into",
    ("components/data/loaders.py", ".txt"): "a user's world given as plain text",
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (prose, not paths)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _text(node: ast.AST) -> str | None:
    """A string constant's text, or an f-string's literal parts ("{rid}.json" -> ".json"); None for an
    f-string without a letter of its own ("{stem}.{counter}{ext}" renames a file, it names none)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        literal = "".join(part.value for part in node.values if isinstance(part, ast.Constant))
        return literal if re.search(r"[A-Za-z]", literal) else None
    return None


def offenders(source: str, where: str) -> list[str]:
    """``where:line text`` for each file name and each join onto a literal in ``source``."""
    tree = ast.parse(source)
    docstrings, found = _docstrings(tree), []
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and FILE_NAME.match(node.value)
                and (where, node.value) not in NOT_PROJECT_PATHS):
            found.append(f"{where}:{node.lineno} {node.value!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            joined = _text(node.right)
            if joined is not None and (where, joined) not in NOT_PROJECT_PATHS and not FILE_NAME.match(joined):
                found.append(f"{where}:{node.lineno} / {joined!r}")
    return found


def _scanned_files() -> list[Path]:
    return sorted(path for folder in SCANNED for path in (REPO / folder).rglob("*.py") if path != SINGLE_SOURCE)


def test_no_project_file_is_named_outside_paths():
    found = [hit for path in _scanned_files()
             for hit in offenders(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert not found, "project paths named outside components/paths.py (name them on Paths):\n" + "\n".join(found)


def test_scanner_finds_a_file_name_a_join_and_an_f_string_suffix():
    source = ('"""A docstring naming metrics.json is prose."""\n'
              'GATE = "gate.json"\n'
              'def f(root, rid):\n'
              '    """Writes x.json."""\n'
              '    return root / "models" / f"{rid}.result.json", "a sentence about x.json"\n')
    assert sorted(offenders(source, "m.py")) == ["m.py:2 'gate.json'", "m.py:5 '.result.json'", "m.py:5 / 'models'"]
