"""Smaller units (issue 30): no library file over 500 lines, at most five library functions over 60 lines.

Lines are counted as written; a function's length is ``end_lineno - lineno + 1`` of its ``def``
(decorators and docstring included), and a nested function counts on its own as well as inside
its parent. "Library" is every ``.py`` file of the package except ``tests/`` (the speed scripts in
``bench/perf`` are included). Each test prints its offenders.

When the limits came in, models/folder.py had 618 lines and seven functions had over 60 lines
(rank_predictions 83, rank 75, run_recipe 74, prune 72, finetune 72, recover 64, write_manifest 64);
all were split, so the limits hold with no exceptions.
"""

import ast
import os
from pathlib import Path

import encslim

ROOT = Path(encslim.__file__).resolve().parent

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
MAX_LONG_FUNCTIONS = 5


SKIPPED_TOP = ("tests", "build", "dist")  # folders of the package root that hold no library code


def library_files(root=ROOT):
    """The package's ``.py`` files outside ``tests/``, hidden folders, virtual environments and build output."""
    found = []
    for folder, subfolders, names in os.walk(root):
        top = Path(folder) == Path(root)
        subfolders[:] = [d for d in subfolders if not (d.startswith(".") or d.endswith(".egg-info")
                                                      or d == "__pycache__" or (top and d in SKIPPED_TOP))]
        found += [Path(folder) / name for name in names if name.endswith(".py")]
    return sorted(found)


def function_lengths(source):
    """``[(name, first line, lines)]`` of every function and method in ``source``, nested ones included."""
    return [(node.name, node.lineno, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def long_files(root=ROOT):
    """``{relative path: lines}`` of library files over :data:`MAX_FILE_LINES`."""
    counts = {str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines()) for p in library_files(root)}
    return {path: n for path, n in counts.items() if n > MAX_FILE_LINES}


def long_functions(root=ROOT):
    """``[(lines, "path:line name")]`` of library functions over :data:`MAX_FUNCTION_LINES`, longest first."""
    found = []
    for path in library_files(root):
        for name, line, n in function_lengths(path.read_text(encoding="utf-8")):
            if n > MAX_FUNCTION_LINES:
                found.append((n, f"{path.relative_to(root)}:{line} {name}"))
    return sorted(found, reverse=True)


def test_function_lengths_count_nested_functions_on_their_own():
    source = "def outer():\n    x = 1\n\n    def inner():\n        return 2\n\n    return inner\n\n\n" \
             "class A:\n    async def method(self):\n        pass\n"
    assert function_lengths(source) == [("outer", 1, 7), ("inner", 4, 2), ("method", 11, 2)]


def test_library_files_leave_out_tests_and_environments(tmp_path):
    for name in ("a.py", "tests/t.py", ".venv/lib/x.py", "pkg.egg-info/y.py", "sub/b.py", "sub/.cache/c.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("pass\n" * (MAX_FILE_LINES + 1 if name == "sub/b.py" else 1))
    assert [str(p.relative_to(tmp_path)) for p in library_files(tmp_path)] == ["a.py", "sub/b.py"]
    assert long_files(tmp_path) == {"sub/b.py": MAX_FILE_LINES + 1}


def test_no_library_file_over_500_lines():
    found = long_files()
    for path, n in sorted(found.items()):
        print(f"{path}: {n} lines (limit {MAX_FILE_LINES})")
    assert not found, f"over {MAX_FILE_LINES} lines: {', '.join(sorted(found))}; split them"


def test_at_most_five_functions_over_60_lines():
    found = long_functions()
    for n, where in found:
        print(f"{n:4d} lines  {where}")
    assert len(found) <= MAX_LONG_FUNCTIONS, (f"{len(found)} functions over {MAX_FUNCTION_LINES} lines "
                                              f"(at most {MAX_LONG_FUNCTIONS}): "
                                 + "; ".join(f"{where} ({n})" for n, where in found))


# Public functions take at most MAX_PARAMETERS parameters (issue 30): positional-only, positional and keyword-only ones,
# not self/cls and not *args/**kwargs; a function whose name starts with "_" is private and not counted.
MAX_PARAMETERS = 8


def parameter_counts(source):
    """``[(name, first line, parameters)]`` of every public function and method in ``source``, nested ones included.

    Parameters are the positional-only, positional and keyword-only ones; a leading ``self`` or ``cls`` and
    ``*args``/``**kwargs`` are not counted; names starting with ``_`` (private, dunder) are left out.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            names = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
            if names and names[0] in ("self", "cls"):
                names = names[1:]
            found.append((node.name, node.lineno, len(names) + len(node.args.kwonlyargs)))
    return found


def public_functions_over(limit=MAX_PARAMETERS, root=ROOT):
    """``[(parameters, "path name", line)]`` of public library functions with more than ``limit`` parameters."""
    found = []
    for path in library_files(root):
        for name, line, n in parameter_counts(path.read_text(encoding="utf-8")):
            if n > limit:
                found.append((n, f"{path.relative_to(root)} {name}", line))
    return sorted(found, reverse=True)


def test_parameter_counts_leave_out_self_varargs_and_private_functions():
    source = ("def f(a, b, /, c, *args, d, e=1, **kwargs):\n    def inner(x, *, y):\n        pass\n\n\n"
              "def _private(a, b, c, d, e, f, g, h, i):\n    pass\n\n\n"
              "class A:\n    def method(self, a):\n        pass\n\n    @classmethod\n    def make(cls, *, b):\n"
              "        pass\n\n    def __init__(self, a, b, c, d, e, f, g, h, i):\n        pass\n\n\n"
              "async def g(*args, **kwargs):\n    pass\n")
    assert parameter_counts(source) == [("f", 1, 5), ("g", 22, 0), ("inner", 2, 2), ("method", 11, 1),
                                        ("make", 15, 1)]


def test_public_functions_over_lists_each_with_its_path(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("def wide(a, b, c, *, d):\n    pass\n\n\ndef narrow(a):\n    pass\n")
    assert public_functions_over(3, tmp_path) == [(4, "pkg/m.py wide", 1)]
    assert public_functions_over(4, tmp_path) == []


def test_no_public_function_over_8_parameters():
    found = public_functions_over()
    for n, where, line in found:
        print(f"{n:3d} parameters  {where} (line {line})")
    assert not found, (f"public functions with more than {MAX_PARAMETERS} parameters: "
                       + ", ".join(f"{where} ({n})" for n, where, _ in found)
                       + "; group what travels together (a config, a small frozen dataclass)")
