"""No code outside ``models/families/`` names a model family (DESIGN §2/§6, STYLE "vllm").

A family is one package plus one line in the registry: every stage asks the registry and the
adapter's capabilities, so no ``.py`` file outside ``models/families/`` (and ``tests/``) holds a
family's name in code: not in an identifier, an import, a string or a help text. Comments and
docstrings naming a family as an example are fine. The one exception is the registry's table of
built-in packages (:data:`encslim.models.registry.BUILTIN_PACKAGES`), the single place that names them.
"""

import ast
import io
import re
import tokenize
from pathlib import Path

import encslim

ROOT = Path(encslim.__file__).resolve().parent
FAMILY_NAMES = re.compile(r"eagle|cambrian|imof|deepseek", re.IGNORECASE)
SKIPPED = ("models/families/", "tests/")
# file -> the one line shape allowed there: a BUILTIN_PACKAGES entry '"name": "encslim.models.families.name",'
ALLOWED = {"models/registry.py": re.compile(r'^\s*"(\w+)": "encslim\.models\.families\.\1",$')}


def docstring_lines(source):
    """Line numbers of every docstring (module, class, function) of ``source``."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def code_hits(source):
    """``[(line number, line)]`` where a family name occurs in code (comments and docstrings left out)."""
    skip, text = docstring_lines(source), source.splitlines()
    found = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE) or token.start[0] in skip:
            continue
        if FAMILY_NAMES.search(token.string):
            found.update(range(token.start[0], token.end[0] + 1))
    return [(n, text[n - 1]) for n in sorted(found)]


def library_files():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(SKIPPED) or any(part.startswith(".") or part.endswith(".egg-info") or part == "build"
                                          for part in path.relative_to(ROOT).parts):
            continue
        yield rel, path


def test_the_scan_sees_code_and_skips_comments_and_docstrings():
    source = ('"""Eagle is an example."""\n'
              'X = 1  # Cambrian too\n'
              'def f():\n    """I-MoF, imof."""\n    return "eagle2"\n'
              'NAME = (\n    "deepseek"\n)\n')
    assert code_hits(source) == [(5, '    return "eagle2"'), (7, '    "deepseek"')]


def test_no_family_named_outside_the_family_packages():
    files = list(library_files())
    assert any(rel == "export/stock.py" for rel, _ in files) and not any(rel.startswith("tests/") for rel, _ in files)
    hits = []
    for rel, path in files:
        allowed = ALLOWED.get(rel)
        for number, line in code_hits(path.read_text(encoding="utf-8")):
            if allowed is None or not allowed.match(line):
                hits.append(f"{rel}:{number}: {line.strip()}")
    assert not hits, "family names in code outside models/families/ (ask the registry or a capability):\n" + "\n".join(hits)
