"""Thread choice and terminal-only progress bars (encslim.runtime)."""

import io

import pytest

from encslim import runtime
from encslim.errors import ConfigError


@pytest.fixture(autouse=True)
def _restore_threads():
    import torch

    before, choice = torch.get_num_threads(), runtime._choice
    yield
    torch.set_num_threads(before)
    runtime._choice = choice


def test_choose_threads_order_requested_env_omp_auto():
    env = {"ENCSLIM_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert runtime.choose_threads(2, cpus=8, load=0, environ=env) == (2, "requested")
    assert runtime.choose_threads(None, cpus=8, load=0, environ=env) == (3, "ENCSLIM_THREADS")
    assert runtime.choose_threads(None, cpus=8, load=0, environ={"OMP_NUM_THREADS": "5"}) == (5, "OMP_NUM_THREADS")
    assert runtime.choose_threads(None, cpus=8, load=0.2, environ={}) == (8, "auto")


def test_auto_leaves_the_busy_cores_and_keeps_one():
    assert runtime.choose_threads(None, cpus=2, load=1.1, environ={}) == (1, "auto")  # one core busy elsewhere
    assert runtime.choose_threads(None, cpus=4, load=1.6, environ={}) == (2, "auto")
    assert runtime.choose_threads(None, cpus=2, load=7.0, environ={}) == (1, "auto")


@pytest.mark.parametrize("bad", [0, -1, "two", "1.5"])
def test_bad_counts_are_config_errors(bad):
    with pytest.raises(ConfigError, match="whole number"):
        runtime.choose_threads(bad, cpus=2, load=0, environ={})
    with pytest.raises(ConfigError, match="ENCSLIM_THREADS"):
        runtime.choose_threads(None, cpus=2, load=0, environ={"ENCSLIM_THREADS": str(bad) if bad else "0"})


def test_configure_threads_sets_torch_once_and_the_environment_block_reports_it(monkeypatch):
    import torch

    from encslim.bench.environment import environment

    monkeypatch.delenv("ENCSLIM_THREADS", raising=False)
    assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("ENCSLIM_THREADS", "2")
    assert runtime.configure_threads() == 1  # an earlier choice stands: commands choose at their start
    block = environment("cpu", "float32")["threads"]
    assert block["threads"] == 1 and block["source"] == "requested" and block["cpus"] >= 1
    runtime._choice = None
    assert runtime.configure_threads() == 2 and runtime.thread_choice()["source"] == "ENCSLIM_THREADS"
    torch.set_num_threads(1)  # changed behind configure_threads' back: said so
    assert environment("cpu", "float32")["threads"]["source"] == "set directly"


def test_available_cpus_follows_the_affinity():
    import os

    if hasattr(os, "sched_getaffinity"):
        assert runtime.available_cpus() == len(os.sched_getaffinity(0))


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_terminal(capsys):
    assert runtime.progress_enabled(None, _Tty()) and runtime.progress_enabled(True, _Tty())
    assert not runtime.progress_enabled(False, _Tty()) and not runtime.progress_enabled(True, io.StringIO())
    assert list(runtime.progress_bar(range(3), desc="x")) == [0, 1, 2]  # pytest's stderr is no terminal
    assert capsys.readouterr().err == ""
