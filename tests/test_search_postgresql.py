"""Search workers on a real PostgreSQL server: a cluster of our own (initdb + pg_ctl on a free local port,
in a temporary folder), several worker processes on one study, one killed with SIGKILL mid-trial.

Skipped, with the reason, only where the server binaries or the driver are missing (`bash .ci/run`
installs both: apt-get postgresql, pip psycopg2-binary from the test extra).
"""
from __future__ import annotations

import glob
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nasdet.search.scoring import arch_key
from nasdet.search.strategies import make_strategy, trial_arch
from nasdet.search.study import open_storage, open_study, run_study
from nasdet.space import SearchSpace


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """``postgresql://`` URL of a throwaway cluster; the server is stopped and its files removed after."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server not installed (initdb/pg_ctl not found): `apt-get install postgresql`, "
                    "as bash .ci/run does")
    pytest.importorskip("psycopg2", reason="PostgreSQL driver psycopg2 missing: pip install -e '.[test]'")
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="nasdet-pg-")
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root: run them as the postgres account
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    data, port = os.path.join(root, "data"), _free_port()
    subprocess.run(as_user + [initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"], check=True,
                   capture_output=True)
    opts = f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    subprocess.run(as_user + [pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(root, "server.log"), "-w", "-t", "60",
                              "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


SPACE = SearchSpace({"b.s0.kernel": (3, 5, 7), "b.s1.expand": (3, 6), "input_size": (64, 96)})  # 12 archs


def cost(arch) -> dict:
    return {"macs": float(arch["b.s0.kernel"] * arch["b.s1.expand"] * arch["input_size"])}


def score(arch) -> dict:
    """A pure function of the arch, so any worker gives the same record."""
    return {"AP": (arch["b.s0.kernel"] + 2 * arch["b.s1.expand"]) / 30 + arch["input_size"] / 1000, "AP50": 0.5}


def _search(url: str, name: str, log: str, worker: int, hang_at: int | None = None, heartbeat: int = 60) -> None:
    """One worker: random strategy over the whole space (num_candidates = every arch). Each scored arch is
    appended to ``log``; with ``hang_at``, the worker hangs inside its scorer when ``log`` holds that many."""
    def scorer(arch):
        if hang_at is not None and len(Path(log).read_text().split()) >= hang_at:
            Path(log + f".hang{worker}").write_text(arch_key(arch))
            time.sleep(600)
        time.sleep(0.02)
        with open(log, "a") as f:
            f.write(arch_key(arch) + "\n")
        return score(arch)

    strategy = make_strategy("random", SPACE, cost, None, seed=0, worker=worker)
    study = open_study(open_storage(url, ".", heartbeat=heartbeat), name, strategy)
    run_study(study, SPACE, strategy, scorer, cost, None, SPACE.num_archs())


def _records(study) -> dict[str, float]:
    return {arch_key(trial_arch(t, SPACE)): t.values[0] for t in study.get_trials(states=(TrialState.COMPLETE,))}


def test_workers_on_postgresql_kill_one_mid_trial_its_arch_is_scored_again(postgres_url, tmp_path):
    log = str(tmp_path / "scored.txt")
    Path(log).write_text("")
    ctx = mp.get_context("fork")
    victim = ctx.Process(target=_search, args=(postgres_url, "pg-workers", log, 0, 4))
    victim.start()
    hang = Path(log + ".hang0")
    deadline = time.time() + 60
    while not hang.exists() and time.time() < deadline and victim.is_alive():
        time.sleep(0.02)
    assert hang.exists(), "worker 0 never reached its hanging trial"
    others = [ctx.Process(target=_search, args=(postgres_url, "pg-workers", log, w)) for w in (1, 2)]
    for p in others:
        p.start()
    time.sleep(0.3)  # the others are scoring while worker 0 hangs inside its trial
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    for p in others:
        p.join(90)
        assert p.exitcode == 0
    study = optuna.load_study(study_name="pg-workers", storage=open_storage(postgres_url, "."))
    trials = study.get_trials()
    killed = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
              and "skipped" not in t.user_attrs]
    assert len(killed) == 1 and arch_key(trial_arch(killed[0], SPACE)) == hang.read_text()  # failed, not left running
    retried = [t for t in trials if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retried) == 1 and trial_arch(retried[0], SPACE) == trial_arch(killed[0], SPACE)
    # the retry scored the arch, or stepped back as a duplicate of a worker's own proposal of it (drawn while
    # the killed trial was failed and the retry not yet enqueued) that was scored first; never a surplus
    assert retried[0].state == TrialState.COMPLETE or retried[0].user_attrs.get("skipped") == "duplicate"
    again = [t for t in study.get_trials(states=(TrialState.COMPLETE,))
             if trial_arch(t, SPACE) == trial_arch(killed[0], SPACE)]
    assert len(again) == 1 and not again[0].user_attrs["worker"].endswith(f":{victim.pid}")  # another worker scored it
    scored = Path(log).read_text().split()
    assert len(scored) == len(set(scored)) == SPACE.num_archs()  # no arch scored twice, none lost
    assert len({t.user_attrs["worker"] for t in study.get_trials(states=(TrialState.COMPLETE,))}) == 3
    assert not study.get_trials(states=(TrialState.RUNNING,))  # (a proposal left enqueued at the end is harmless)

    single_log = str(tmp_path / "single.txt")
    Path(single_log).write_text("")
    _search(postgres_url, "pg-single", single_log, 0)
    single = optuna.load_study(study_name="pg-single", storage=open_storage(postgres_url, "."))
    assert _records(study) == _records(single)  # the same archs with the same scores


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # this test asks the lost trial itself
def test_a_trial_whose_heartbeat_stopped_is_failed_and_retried(postgres_url, tmp_path):
    """A worker on another host died mid-trial (its pid means nothing here): its trial's Optuna heartbeat
    stops, and after the grace period (2 x heartbeat) a driver fails the trial and scores the arch."""
    storage = open_storage(postgres_url, ".", heartbeat=1)
    strategy = make_strategy("random", SPACE, cost, None, seed=1)
    study = open_study(storage, "pg-heartbeat", strategy)
    arch = SPACE.smallest()
    study.enqueue_trial(arch)
    lost = study.ask()
    for n in SPACE.names:
        lost.suggest_categorical(n, list(SPACE[n]))
    lost.set_user_attr("worker", "another-host:4242")
    lost.set_user_attr("claim", True)
    storage.record_heartbeat(lost._trial_id)  # its last sign of life
    time.sleep(2.5)
    counts = run_study(study, SPACE, strategy, score, cost, None, 3)
    assert counts["stale"] == 1
    assert study.trials[lost.number].state == TrialState.FAIL
    again = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("retry_of") == lost.number]
    assert len(again) == 1 and trial_arch(again[0], SPACE) == arch
