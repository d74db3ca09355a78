"""Issue 16: plain progress lines in log files; OpenMP's passive wait policy and thread counts that fit the cores.
(The pipeline's log file lines: tests/test_tune_export_pipeline.py::test_pipeline_runs_every_stage_...)"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress

from nasdet.progress import PlainProgress, progress_bar
from nasdet.threads import LOCAL_PROCESSES_ENV, set_torch_threads, thread_count

ROOT = Path(__file__).parent.parent


def test_progress_is_a_live_bar_on_a_terminal_and_plain_lines_in_a_file():
    assert isinstance(progress_bar(Console(force_terminal=True), label="x"), Progress)
    out = io.StringIO()
    bar = progress_bar(Console(file=out, width=200), label="train baseline step", every=3,
                       fields=lambda f: f"loss {f['loss']:.2f} [bold]x[/]")
    assert isinstance(bar, PlainProgress)
    with bar:
        task = bar.add_task("", total=7, completed=0, loss=float("nan"))
        for step in range(1, 8):
            bar.update(task, completed=step, loss=1.0 / step)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["train baseline step: 3/7 (43%)", "train baseline step: 6/7 (86%)",
                                                      "train baseline step: 7/7 (100%)"]
    assert "loss 0.33 [bold]x[/]" in lines[0] and "elapsed 0:00:00" in lines[0] and "left" in lines[0]
    assert "left" not in lines[-1]  # done
    # resumed at 4 of 7, advancing, with a description: a line at 6, and the last state on exit
    out = io.StringIO()
    with PlainProgress(Console(file=out, width=200), "search candidates", every=2) as bar:
        task = bar.add_task("best AP 0.1", total=7, completed=4)
        bar.update(task, advance=1)
        bar.update(task, advance=1, description="best AP 0.2")
        bar.update(task, total=9)
    assert [line.split(", elapsed")[0] for line in out.getvalue().splitlines()] == [
        "search candidates: 6/7 (86%), best AP 0.2"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_cli_sets_a_passive_openmp_wait_policy_before_torch_loads_unless_the_user_chose_one():
    # the policy as it stands when torch (and with it OpenMP) is first imported: only then does it take effect
    probe = ("import os, sys\n"
             "seen = []\n"
             "class Spy:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'torch' and not seen: seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
             "sys.meta_path.insert(0, Spy())\n"
             "import nasdet.cli\n"
             "import torch\n"
             "print(seen[0], os.environ.get('OMP_WAIT_POLICY'))\n")
    out = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "PASSIVE"]
    out = subprocess.run([sys.executable, "-c", probe], env=_env(OMP_WAIT_POLICY="ACTIVE"), capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["ACTIVE", "ACTIVE"]
    # `python -m nasdet` goes through the same module
    main = (ROOT / "nasdet" / "__main__.py").read_text()
    assert "from .cli import main" in main


def test_thread_counts_never_oversubscribe_the_cores(monkeypatch):
    assert thread_count(None, processes=1, cores=2) == 2
    assert thread_count(None, processes=2, cores=2) == 1
    assert thread_count(None, processes=3, cores=2) == 1  # at least one
    assert thread_count(4, processes=1, cores=2) == 2  # more threads than cores: capped
    assert thread_count(1, processes=1, cores=8) == 1  # fewer: as asked
    assert thread_count(None, processes=4, cores=16) == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv(LOCAL_PROCESSES_ENV, "2")  # set by `nasdet search --workers 2` for its workers
    assert thread_count(None, cores=8) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's
    assert thread_count(None, cores=8) == 2
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(3, processes=1) == min(3, len(os.sched_getaffinity(0)))
        assert torch.get_num_threads() == min(3, len(os.sched_getaffinity(0)))
    finally:
        torch.set_num_threads(before)
