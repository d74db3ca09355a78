"""Issue 16: plain progress lines in log files; thread counts that fit the cores (issue 27: and follow their load).
(The pipeline's log file lines: tests/test_tune_export_pipeline.py::test_pipeline_runs_every_stage_...)"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from rich.progress import Progress

from nasdet.progress import PlainProgress, progress_bar
from nasdet.threads import (ADAPTIVE_ENV, LOCAL_PROCESSES_ENV, ThreadGovernor, busy_seconds, loader_workers,
                            set_torch_threads, thread_count, threads_for_load)

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
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_cli_keeps_openmps_wait_policy_as_the_user_has_it():
    # issue 27: PASSIVE cost 40 % of an idle machine's speed; the load is handled by the thread count instead.
    # The policy as it stands when torch (and with it OpenMP) is first imported: only then does it take effect.
    probe = ("import os, sys\n"
             "seen = []\n"
             "class Spy:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'torch' and not seen: seen.append(os.environ.get('OMP_WAIT_POLICY', '-'))\n"
             "sys.meta_path.insert(0, Spy())\n"
             "import nasdet.cli\n"
             "import torch\n"
             "from nasdet.threads import wait_policy\n"
             "print(seen[0], os.environ.get('OMP_WAIT_POLICY', '-'), wait_policy(), sep='|')\n")
    out = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip().split("|") == ["-", "-", "OpenMP default wait policy (spin, then sleep)"]
    out = subprocess.run([sys.executable, "-c", probe], env=_env(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT="1000"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().split("|") == [
        "PASSIVE", "PASSIVE", "wait policy set by the user: OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=1000"]
    # `python -m nasdet` goes through the same module
    main = (ROOT / "nasdet" / "__main__.py").read_text()
    assert "from .cli import main" in main


def test_thread_count_follows_the_cores_other_processes_leave_free():
    assert threads_for_load(2, cores=2, others=0.0) == 2  # idle: all
    assert threads_for_load(2, cores=2, others=0.4) == 2  # a process at 0.4 core leaves room
    assert threads_for_load(2, cores=2, others=0.67) == 1  # a busy loop beside 2 spinning threads gets 2/3 core
    assert threads_for_load(2, cores=2, others=1.0) == 1
    assert threads_for_load(2, cores=2, others=5.0) == 1  # never none
    assert threads_for_load(8, cores=16, others=4.0) == 8  # at most what thread_count allowed
    assert threads_for_load(8, cores=16, others=10.2) == 6


def test_busy_seconds_reads_only_this_processs_cores_from_proc_stat():
    stat = ("cpu  300 10 60 900 5 1 2 3 0 0\n"
            "cpu0 100 0 20 300 5 0 1 1 0 0\n"
            "cpu1 100 10 20 300 0 1 0 1 0 0\n"
            "cpu2 100 0 20 300 0 0 1 1 0 0\n"
            "intr 12345 0 0\nctxt 99\nprocs_running 3\n")
    # cpu0: user 100 + system 20 + softirq 1 + steal 1; cpu1: 100 + nice 10 + 20 + irq 1 + steal 1 (idle, iowait out)
    assert busy_seconds({0, 1}, stat, ticks_per_s=100.0) == (122 + 132) / 100
    assert busy_seconds({2}, stat, ticks_per_s=100.0) == 1.22


def test_governor_lowers_torch_threads_under_load_and_restores_them(monkeypatch):
    monkeypatch.delenv(ADAPTIVE_ENV, raising=False)
    before = torch.get_num_threads()
    gov = ThreadGovernor(max_threads=2, window=1.0)
    if not gov.enabled:
        pytest.skip("no /proc/stat or CPU affinity here: the governor keeps the count fixed")
    gov.cpus = {0, 1}
    # (wall s, busy s of the two cores, this process's CPU s): scripted windows
    samples = iter([(0.0, 0.0, 0.0),  # the first mark; then a poll too soon decides nothing
                    (2.0, 4.0, 2.7),  # 2 s, cores busy 4 s, 2.7 of them ours: others 0.65 of a core -> 1 thread
                    (4.0, 8.0, 4.7),  # others 1.0 -> still 1
                    (6.0, 10.0, 6.7)])  # others 0 -> 2 again
    monkeypatch.setattr(gov, "_sample", lambda: next(samples))
    monkeypatch.setattr("nasdet.threads.time.monotonic", lambda: gov._mark[0] + 0.5 if gov._mark else 0.0)
    try:
        torch.set_num_threads(2)
        assert gov.poll() is None and gov.poll() is None
        monkeypatch.setattr("nasdet.threads.time.monotonic", lambda: 1e9)
        assert gov.poll() == 1 and torch.get_num_threads() == 1
        assert gov.poll() is None and torch.get_num_threads() == 1
        assert gov.poll() == 2 and torch.get_num_threads() == 2
        assert gov.changes == 2
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv(ADAPTIVE_ENV, "0")
    assert not ThreadGovernor(max_threads=2).enabled  # the user's fixed count
    assert not ThreadGovernor(max_threads=1).enabled  # one thread has nothing to lower


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


def test_auto_loader_workers_leave_the_cores_to_torchs_threads_on_a_cpu():
    assert loader_workers(3, "cpu", cores=2, threads=2) == 3  # the user's number stands
    assert loader_workers(0, "cuda", cores=16, threads=16) == 0
    assert loader_workers("auto", "cpu", cores=2, threads=2) == 0  # the demo: both cores train, loading in-process
    assert loader_workers("auto", "cpu", cores=2, threads=1) == 1
    assert loader_workers("auto", "cpu", cores=16, threads=8) == 4  # at most 4 beside the CPU's own step
    assert loader_workers("auto", torch.device("cpu"), cores=16, threads=16) == 0
    assert loader_workers("auto", "cuda:1", cores=16, threads=16) == 8  # a GPU: the cores feed it
    assert loader_workers("auto", torch.device("cuda"), cores=4, threads=4) == 3
    assert loader_workers("auto", "cuda", cores=1, threads=1) == 0


def test_num_workers_is_a_number_or_auto():
    from nasdet.config import DataConfig

    split = {"annotations": "a.json", "images": "img"}
    data = {"train": split, "val": split}
    assert DataConfig.model_validate(data).num_workers == "auto"
    assert DataConfig.model_validate({**data, "num_workers": 3}).num_workers == 3
    for bad in (-1, "many"):
        with pytest.raises(Exception, match="num_workers"):
            DataConfig.model_validate({**data, "num_workers": bad})


def test_a_search_times_candidates_on_the_threads_it_was_given_not_the_governors_last_count(monkeypatch):
    """With cost.threads unset, torch timings (cost.latency torch, the float lookup table) hold the count the
    process was given while the governor lowers torch's under load (one study mixed 1- and 2-thread latencies,
    qa_latency #6); onnxruntime keeps its own default, as an export's timing does."""
    from nasdet import threads
    from nasdet.config import CostConfig
    from nasdet.stages.search import timing_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_governor", ThreadGovernor(max_threads=2))
    try:
        torch.set_num_threads(1)  # what the governor left after a busy window
        assert timing_threads(CostConfig(latency="torch")) == 2
        assert timing_threads(CostConfig(latency="lut")) == 2
        assert timing_threads(CostConfig(latency="lut", lut_precision="int8")) is None
        assert timing_threads(CostConfig(latency="onnxruntime")) is None
        assert timing_threads(CostConfig(latency="torch", threads=3)) == 3
    finally:
        torch.set_num_threads(before)
