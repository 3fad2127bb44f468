"""The repository root installs as the package `encslim` and nothing generic lands at top level."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    return next(out.glob("encslim-*.whl"))


def test_wheel_holds_only_the_encslim_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"encslim", next(t for t in tops if t.endswith(".dist-info"))}
    for sub in ("models", "bench", "prune", "finetune", "export", "recipes"):
        assert f"encslim/{sub}/__init__.py" in names
    assert "encslim/cli.py" in names
    assert not any(n.startswith("encslim/tests/") for n in names)


def test_fresh_venv_imports_encslim_prune_but_not_export(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ok = subprocess.run([str(python), "-c", "import encslim, encslim.prune; print(encslim.__file__)"],
                        cwd=elsewhere, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert str(env_dir) in ok.stdout
    bad = subprocess.run([str(python), "-c", "import export"], cwd=elsewhere, capture_output=True, text=True)
    assert bad.returncode == 1 and "No module named 'export'" in bad.stderr
    cli = subprocess.run([str(env_dir / "bin" / "encslim"), "--version"], cwd=elsewhere, capture_output=True,
                         text=True)
    assert cli.returncode == 0 and "encslim" in cli.stdout
