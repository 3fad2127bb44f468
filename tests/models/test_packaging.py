"""A wheel of the repository holds all of ``encslim`` and nothing else, and works where it is installed.

The wheel is built from a copy of the files git sees (tracked, or new and not ignored), so a build
folder left in the working tree cannot add stale files to it, and the shared tree is not written.
"""

import json
import os
import re
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# files of the repository root (also the package's folder) that build or describe the project
BUILD_FILES = {"setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", ".gitignore"}
NOT_SHIPPED_FOLDERS = ("tests/", ".ci/")
NOT_SHIPPED = {"demo/frontier.png"}  # README's picture; nothing reads it at run time
# run in the installed venv: where encslim comes from, and every registered family's model types
PROBE = """
import json, sys
import encslim
from encslim.models import registry
print(json.dumps({"file": encslim.__file__, "version": encslim.__version__,
                  "families": {n: list(f.model_types) for n, f in registry.families().items()}}))
"""
# run in the installed venv on the tiny folders: each one's slots read from config.json alone, and the
# files of every encslim module this imported (the adapters of every family)
SLOTS = """
import json, sys
from pathlib import Path
from encslim.models.registry import adapter_for_config
slots = {}
for folder in sys.argv[1:]:
    adapter = adapter_for_config(json.loads(Path(folder, "config.json").read_text()))
    slots[folder] = list(adapter.slot_names(adapter.read_config(folder)))
files = sorted({m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] == "encslim"
                and getattr(m, "__file__", None)})
print(json.dumps({"slots": slots, "module_files": files}))
"""


def _source_files():
    """Files git sees in the working tree: tracked (and still there) or new and not ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def _shipped(name):
    return not (name in BUILD_FILES or name in NOT_SHIPPED or name.startswith(NOT_SHIPPED_FOLDERS))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A copy of the working tree as git sees it; returns ``(folder, [relative file names])``."""
    folder = tmp_path_factory.mktemp("source") / "encslim"
    files = _source_files()
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)
    return folder, files


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(out), str(source[0])], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return next(out.glob("encslim-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed (not editable); returns ``(venv folder, env, cwd)``.

    The venv sees the already installed packages (torch, transformers, ...) through a ``.pth`` line
    naming their site-packages, not through ``--system-site-packages``: that would also run the
    ``.pth`` hooks there, one of which is the editable install's finder of ``encslim`` in the
    repository, which answers for any ``encslim`` module the wheel lacks.
    """
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    outer = [*site.getsitepackages(), site.getusersitepackages()]
    Path(purelib, "_outer_site_packages.pth").write_text("".join(f"{d}\n" for d in outer if Path(d).is_dir()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
                           str(wheel)], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return env_dir, env, elsewhere


def _run(installed, *args):
    env_dir, env, cwd = installed
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def test_wheel_holds_only_the_encslim_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"encslim", next(t for t in tops if t.endswith(".dist-info"))}
    for sub in ("models", "bench", "prune", "finetune", "export", "recipes", "models/families/cambrian"):
        assert f"encslim/{sub}/__init__.py" in names
    assert "encslim/cli.py" in names
    assert not any(n.startswith("encslim/tests/") for n in names)
    assert "encslim/setup.py" not in names


def test_wheel_holds_every_file_git_sees_outside_tests(source, wheel):
    """A package folder without ``__init__.py``, or a data file setup.cfg does not list, fails here."""
    expected = {name for name in source[1] if _shipped(name) and not name.endswith((".pyc", ".pyo"))}
    shipped = {n.removeprefix("encslim/") for n in zipfile.ZipFile(wheel).namelist() if n.startswith("encslim/")}
    assert not expected - shipped, f"tracked files missing from the wheel: {sorted(expected - shipped)}"
    assert not shipped - expected, f"files in the wheel that should not ship or git does not see: {sorted(shipped - expected)}"
    # the run-time data the library reads, by name
    for name in ("py.typed", "demo/model/config.json", "demo/model/model.safetensors", "recipes/demo.yaml",
                 "recipes/deepspeed/zero2.json", "recipes/deepspeed/zero3.json"):
        assert name in shipped


def test_fresh_venv_imports_encslim_from_the_wheel(installed):
    env_dir = installed[0]
    probe = json.loads(_run(installed, env_dir / "bin" / "python", "-c", PROBE))
    assert Path(probe["file"]).resolve().is_relative_to(env_dir.resolve())
    assert not Path(probe["file"]).resolve().is_relative_to(ROOT)
    assert set(probe["families"]) >= {"native", "cambrian"}
    bad = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import export"], cwd=installed[2],
                         env=installed[1], capture_output=True, text=True)
    assert bad.returncode == 1 and "No module named 'export'" in bad.stderr
    assert _run(installed, env_dir / "bin" / "encslim", "--version").strip().endswith(probe["version"])


def _inspect_family(installed, name, out):
    """``create-tiny`` then ``inspect --json`` from the install; returns the inspect report."""
    encslim = installed[0] / "bin" / "encslim"
    note = _run(installed, encslim, "create-tiny", out, "--family", name, "--seed", "0")
    assert f"wrote {out}" in note
    flags = [arg for pair in re.findall(r"--encoder (\S+=\S+)", note) for arg in ("--encoder", pair)]
    return json.loads(_run(installed, encslim, "inspect", out, "--json", *flags))


@pytest.mark.slow
def test_every_family_creates_and_inspects_from_the_wheel(installed):
    env_dir, _, cwd = installed
    python = env_dir / "bin" / "python"
    families = json.loads(_run(installed, python, "-c", PROBE))["families"]
    reports = {name: _inspect_family(installed, name, cwd / f"tiny-{name}") for name in families}
    probe = json.loads(_run(installed, python, "-c", SLOTS, *(cwd / f"tiny-{n}" for n in families)))
    outside = [f for f in probe["module_files"] if not Path(f).resolve().is_relative_to(env_dir.resolve())]
    assert not outside, f"encslim modules imported from outside the venv: {outside}"
    for name, report in reports.items():
        expected = probe["slots"][str(cwd / f"tiny-{name}")]
        assert report["model_type"] in families[name], name
        assert expected and [s["name"] for s in report["slots"]] == expected, name
        assert all(s["params"] > 0 for s in report["slots"]), name
        assert report["params_total"] > sum(s["params"] for s in report["slots"]) > 0, name
