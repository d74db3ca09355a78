"""One writer per stage folder (issue 24): a second process gets one line naming the holder's pid, fast;
the lock is the OS's (flock), so a killed holder leaves nothing to clean up."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml

from conftest import tiny_raw
from test_user_data_safety import cli

HOLD = """
import sys, time
from nasdet.workdir import WriterLock
lock = WriterLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_with_the_holders_pid(shapes_dir, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(shapes_dir, tmp_path / "wd")))
    stage = tmp_path / "wd" / "baseline"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(stage)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "nasdet", "train", str(cfg), "--set", "train.max_steps=1"],
                           capture_output=True, text=True, env=env, timeout=120)
        took = time.perf_counter() - t
        out = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 2, out
        assert f"pid {holder.pid}" in out and str(stage) in "".join(out.split()) and "Traceback" not in out, out
        assert not (stage / "ckpt").exists() and not (tmp_path / "wd" / "config.yaml").exists()
        assert took < 60, took  # refused before training
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed holder's lock went with it: the same command now runs (in this process: no second start-up)
    code, out, exc = cli("train", cfg, "--set", "train.max_steps=1")
    assert code == 0 and exc is None, out
    assert (stage / "ckpt" / "last.pt").is_file()


HOLD_AND_FORK = """
import os, sys, time
from nasdet.workdir import WriterLock
lock = WriterLock(sys.argv[1]).acquire()
ready = sys.argv[1] + ".child"
child = os.fork()  # as a DataLoader worker is
if child == 0:  # (the fork handlers have run by the time os.fork returns here)
    open(ready, "w").close()
    time.sleep(120)
    os._exit(0)
while not os.path.exists(ready):  # a worker started long before the kill, as a loader's are
    time.sleep(0.01)
print(child, flush=True)
time.sleep(120)
"""


def test_a_killed_writers_forked_workers_do_not_keep_its_lock(tmp_path):
    """flock belongs to the open file, which a forked DataLoader worker shares: after a kill -9 of the writer its
    orphaned workers held the lock for seconds, and a rerun at once was refused naming the dead pid."""
    from nasdet.workdir import WriterLock

    stage = tmp_path / "wd" / "baseline"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(stage)], stdout=subprocess.PIPE, text=True,
                              env=env)
    worker = int(holder.stdout.readline())
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(worker, 0)  # the worker lives on
        lock = WriterLock(stage).acquire()  # WorkDirBusy naming the dead pid before
        lock.release()
    finally:
        os.kill(worker, signal.SIGKILL)
