"""Architecture checks: the import-linter contracts in setup.cfg, and a light ``encslim --help``.

The contracts (``[importlinter...]`` in setup.cfg) encode DESIGN's layering: models < data <
bench < prune | finetune | export < demo < recipes < cli, with the speed scripts in
``encslim.bench.perf`` allowed to import any stage. .ci/run runs ``lint-imports`` as well.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# lint-imports, run by this interpreter (the one that has encslim installed), not whatever
# `lint-imports` happens to be first on PATH
LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports_command; "
    "sys.exit(lint_imports_command())"
)

HELP_IMPORTS = r"""
import sys
from encslim.cli import main
try:
    main(["--help"])
    code = 0
except SystemExit as exit_:
    code = exit_.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"torch", "transformers"})
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


def test_import_contracts_are_kept():
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed (it is in the test extra: pip install -e '.[test]')")
    proc = subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "0 broken" in output, output
    assert "Analyzed" in output, output


def test_help_imports_neither_torch_nor_transformers():
    proc = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Commands" in proc.stdout and "finetune" in proc.stdout, proc.stdout
    assert "HEAVY=\n" in proc.stdout, f"`encslim --help` imported: {proc.stdout.rsplit('HEAVY=', 1)[-1]}"
