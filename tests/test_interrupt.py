"""Ctrl-C (SIGINT to the process group, DataLoader workers included) or SIGTERM while a stage trains: the step
under way ends, ``last.pt`` is saved at it and the rerun continues from there. Before, only every
``train.ckpt_every_steps`` checkpoint was kept (up to 2000 steps in the DetNAS recipes), nothing was said, and
``log.jsonl`` kept the lost steps, logged again by the rerun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_raw
from nasdet.train.checkpoint import load_checkpoint


def _steps(log) -> list[int]:
    return [json.loads(line)["step"] for line in log.read_text().splitlines() if "eval" not in line] \
        if log.is_file() else []


@pytest.mark.parametrize("sig, workers", [(signal.SIGINT, 1), (signal.SIGTERM, 1)])
def test_a_signal_saves_the_step_reached_and_the_rerun_continues_from_it(shapes_dir, tmp_path, sig, workers):
    """With loader workers, a signal goes to the whole process group (a terminal's Ctrl-C, a scheduler's SIGTERM):
    torch's workers died of SIGTERM, and the trainer failed on "DataLoader worker ... killed by signal" unsaved."""
    raw = tiny_raw(shapes_dir, tmp_path / "wd")
    raw["train"].update({"epochs": 40, "max_steps": 400, "ckpt_every_steps": 1000})
    raw["data"]["num_workers"] = workers
    raw["eval"]["max_images"] = 4
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    stage = tmp_path / "wd" / "baseline"
    log = stage / "log.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "nasdet", "train", str(cfg)]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           start_new_session=True)
    try:
        deadline = time.time() + 240
        while len(_steps(log)) < 3 and time.time() < deadline and run.poll() is None:
            time.sleep(0.2)
        assert len(_steps(log)) >= 3, run.communicate()[0] if run.poll() is not None else "no steps logged"
        os.killpg(run.pid, sig)  # the group, the loader's worker included (a terminal's Ctrl-C, a scheduler's SIGTERM)
        out = " ".join(run.communicate(timeout=120)[0].split())
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode != 0 and "Traceback" not in out, out
    assert f"{signal.Signals(sig).name}: stopped after step" in out, out
    saved = load_checkpoint(stage / "ckpt" / "last.pt")["step"]
    assert saved >= 3 and f"stopped after step {saved}, saved in" in out, out
    # the rerun continues from the saved step (shortened: the rest of the recipe is not this test's)
    r = subprocess.run(cmd + ["--set", f"train.max_steps={saved + 2}"], capture_output=True, text=True, env=env,
                       timeout=300)
    said = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 0 and f"resumed at step {saved}" in said, said
    assert _steps(log) == list(range(1, saved + 3))  # each step logged once


def test_a_run_killed_before_its_first_checkpoint_logs_its_steps_once(tiny_config, tmp_path):
    from rich.console import Console

    from nasdet.stages.baseline import run_baseline

    cfg = tiny_config(train={"max_steps": 3, "ckpt_every_steps": 1000}, eval={"max_images": 4})
    log = tmp_path / "work" / "baseline" / "log.jsonl"
    (log.parent / "ckpt").mkdir(parents=True)
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2)))  # a killed run's
    half = log.parent / "ckpt" / ".last.pt.x1y2z3.tmp"  # a checkpoint a kill -9 cut mid-write
    half.write_bytes(b"\0" * 1000)
    run_baseline(cfg, console=Console(quiet=True))
    assert _steps(log) == [1, 2, 3]
    assert not half.exists() and (log.parent / "ckpt" / "last.pt").is_file()


@pytest.mark.parametrize("workers, resumed_with, old_checkpoint", [(1, 1, False), (0, 1, False), (1, 0, False),
                                                                   (1, 0, True)])
def test_a_run_resumed_mid_epoch_with_loader_workers_is_the_uninterrupted_run(tiny_config, tmp_path, workers,
                                                                              resumed_with, old_checkpoint):
    """The loader's worker processes drew augmentations from streams seeded at the start of each epoch's loader:
    a run resumed mid-epoch augmented its next batches as the epoch's first ones (losses apart from the first
    resumed step, another final AP). Each item's draws now follow from its step and place in the batch. A run
    resumed with another data.num_workers (or its auto on another core share) keeps its augmentation stream:
    loading in the main process drew from that process's generator, workers from each item's seed (all 566
    tensors of a resumed supernet were another run's)."""
    import torch
    from rich.console import Console

    from nasdet.stages.baseline import run_baseline

    def run(work, steps):
        n = workers if work == "whole" or steps == 3 else resumed_with
        cfg = tiny_config(train={"max_steps": steps, "ckpt_every_steps": 3, "threads": 1, "epochs": 2},
                          data={"num_workers": n}, eval={"max_images": 2}, work_dir=str(tmp_path / work))
        run_baseline(cfg, console=Console(quiet=True))
        stage = tmp_path / work / "baseline"
        losses = [json.loads(line)["loss"] for line in (stage / "log.jsonl").read_text().splitlines()
                  if "loss" in line]
        return losses, load_checkpoint(stage / "ckpt" / "last.pt")

    whole, end = run("whole", 6)
    first, mid = run("cut", 3)
    assert mid["batch_in_epoch"] == 3 and mid["epoch"] == 0  # stopped mid-epoch
    if old_checkpoint:  # written before the stream was recorded: told by the loader workers its config asked for
        del mid["augment_stream"]
        torch.save(mid, tmp_path / "cut" / "baseline" / "ckpt" / "last.pt")
    resumed, after = run("cut", 6)
    assert resumed == whole
    assert all(torch.equal(v, after["model"][k]) for k, v in end["model"].items())


_POOL = """
import sys
from nasdet.cli import terminate_as_interrupt
from nasdet.data.synthetic import make_synthetic
terminate_as_interrupt()
for i in range(3):
    make_synthetic(sys.argv[1] + str(i), n_train=12, n_val=4, size=32, seed=i, workers=2)
"""


def test_make_synthetics_pool_ends_without_a_traceback():
    """`make demo` printed a KeyboardInterrupt traceback from `nasdet data make-synthetic`: its multiprocessing pool
    ended its idle workers with SIGTERM, and the forked workers had inherited the CLI's handler (SIGTERM as Ctrl-C).
    The pool now ends them on its sentinel; the CLI's own process still stops on SIGTERM as on Ctrl-C."""
    import tempfile

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", _POOL, str(Path(tmp) / "s")], capture_output=True, text=True,
                              env=env, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, \
        done.stderr
    wait = "from nasdet.cli import terminate_as_interrupt; terminate_as_interrupt(); import time; print('ready', " \
           "flush=True); time.sleep(60)"
    run = subprocess.Popen([sys.executable, "-c", wait], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env)
    assert run.stdout.readline().strip() == "ready"
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert "KeyboardInterrupt" in err


def test_an_items_augmentation_is_the_same_in_the_main_process_and_in_a_worker(tiny_config):
    """``nasdet diagnose --workers 2`` trained its stand-alone archs otherwise than one process (`data.num_workers:
    auto` gave no loader worker at a core each, one alone): its trainings draw each item's augmentation from the
    item's seed in either place, and in the main process the training's own stream goes on untouched."""
    import torch

    from nasdet.data.build import build_datasets
    from nasdet.data.transforms import at_train_size

    cfg = tiny_config(data={"augment": {"hflip": 0.5, "photometric": 1.0}})
    train = at_train_size(build_datasets(cfg)["train"], 64)
    items = [(i, None, 1000 + i) for i in range(6)]
    torch.manual_seed(7)
    before = torch.get_rng_state()
    here = [train[item] for item in items]
    assert torch.equal(torch.get_rng_state(), before)
    loader = torch.utils.data.DataLoader(train, batch_size=None, sampler=items, num_workers=1)
    there = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) for a, b in zip(here, there))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(here, [train[(i, None, 2000 + i)] for i in range(6)]))



_LOADER_UNDER_CTRL_C = """
import sys, time, torch
from nasdet.cli import terminate_as_interrupt
terminate_as_interrupt()
class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 10000
    def __getitem__(self, i):
        time.sleep(0.05)
        return torch.zeros(1)
try:
    for n, _ in enumerate(torch.utils.data.DataLoader(Slow(), batch_size=2, num_workers=2)):
        if n == 20:
            print("ready", flush=True)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_stops_a_loader_with_workers_as_an_interruption():
    """Ctrl-C reaches a loader's worker processes too (one process group); they inherit the CLI's handler, which
    raises KeyboardInterrupt there as Python's own does, and torch's worker loop ends quietly on it. (Ending them by
    the signal itself instead, as SIGTERM does in forked children, made the loader fail: "RuntimeError: DataLoader
    worker (pid ...) is killed by signal: Interrupt".)"""
    run = subprocess.Popen([sys.executable, "-c", _LOADER_UNDER_CTRL_C], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
                           start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert run.stdout.readline().strip() == "ready"
        os.killpg(run.pid, signal.SIGINT)  # a terminal's Ctrl-C
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130 and "killed by signal" not in err and "RuntimeError" not in err, err


def _sleeper(path: str, ignore_term: bool) -> None:
    import signal as sig
    import time as clock

    if ignore_term:  # as a training loader's worker does (nasdet.signals.serve_through_sigterm)
        sig.signal(sig.SIGTERM, sig.SIG_IGN)
    else:  # a process of the caller's own, which cleans up on SIGTERM
        sig.signal(sig.SIGTERM, lambda *a: (open(path, "w").write("term"), os._exit(0)))
    open(path + ".up", "w").close()
    clock.sleep(60)


def test_at_exit_daemonic_children_get_sigterm_then_sigkill_if_they_ignore_it(tmp_path):
    """qa_docs #5's exit hook: a loader worker ignoring SIGTERM is killed (the command hung in multiprocessing's
    join), while a daemonic process that handles SIGTERM still gets it first."""
    import multiprocessing
    import time as clock

    from nasdet.signals import end_daemon_children

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_sleeper, args=(str(tmp_path / name), ignore), daemon=True)
             for name, ignore in (("polite", False), ("deaf", True))]
    for p in procs:
        p.start()
    while not all((tmp_path / f"{n}.up").exists() for n in ("polite", "deaf")):
        clock.sleep(0.05)
    start, handler = clock.monotonic(), signal.getsignal(signal.SIGCHLD)
    try:
        end_daemon_children(grace_s=0.5)
    finally:  # (an exit hook: it leaves SIGCHLD at its default, which torch's loaders set once per process)
        signal.signal(signal.SIGCHLD, handler)
    for p in procs:
        p.join(5)
    assert not any(p.is_alive() for p in procs) and clock.monotonic() - start < 5
    assert (tmp_path / "polite").read_text() == "term"  # its own handler ran
    assert procs[1].exitcode == -signal.SIGKILL
