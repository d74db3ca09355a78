"""The commands a user runs, end to end on the tiny synthetic set (subprocesses, as a user would; a command's
later calls in one test in-process, which spares each a Python and torch start-up of some 5 s)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_raw
from test_user_data_safety import cli


def nasdet(*args, cwd=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nasdet", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def write_cfg(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def test_make_synthetic_cli(tmp_path):
    r = nasdet("data", "make-synthetic", tmp_path / "s", "--train", 6, "--val", 2, "--size", 64, "--seed", 1)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s" / "train" / "annotations.json").read_text())["images"]
    r = nasdet("data", "make-synthetic", tmp_path / "s", "--train", 6, "--val", 2, "--size", 64, "--seed", 1,
               "--skip-existing")
    assert r.returncode == 0 and "already" in r.stdout
    r = nasdet("data", "make-synthetic", tmp_path / "s", "--train", 5, "--val", 2, "--size", 64, "--seed", 1,
               "--skip-existing")  # other arguments: regenerated, not silently reused
    assert r.returncode == 0 and "already" not in r.stdout
    assert len(json.loads((tmp_path / "s" / "train" / "annotations.json").read_text())["images"]) == 5


def test_help_and_make_synthetic_start_without_importing_torch(tmp_path):
    # torch and torchvision take ~3 s to import: --help and the data generator do without them
    code = ("import sys; from nasdet.cli import app; sys.argv = ['nasdet', *sys.argv[1:]]\n"
            "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    for args in (["--help"], ["data", "make-synthetic", tmp_path / "s", "--train", 8, "--val", 1, "--size", 48]):
        r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "s" / "val" / "annotations.json").is_file()


def test_train_eval_cost_stats(shapes_dir, tmp_path):
    cfg = write_cfg(tmp_path / "tiny.yaml", tiny_raw(shapes_dir, tmp_path / "wd"))
    r = nasdet("train", cfg, "--set", "train.epochs=1", "--set", "train.max_steps=3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "AP50" in r.stdout
    resolved = yaml.safe_load((tmp_path / "wd" / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 3  # the overrides are what ran
    code, out, exc = cli("eval", cfg, "--set", "train.epochs=1")
    assert code == 0 and exc is None, out
    metrics = json.loads((tmp_path / "wd" / "baseline" / "metrics.json").read_text())
    assert metrics["step"] == 3 and "AP" in metrics["metrics"]
    code, out, exc = cli("cost", cfg)
    assert code == 0 and exc is None, out
    cost = json.loads((tmp_path / "wd" / "baseline" / "cost.json").read_text())
    assert cost["macs"]["total"] > cost["macs"]["backbone"] > 0 and cost["latency"]["median_ms"] > 0
    assert cost["latency_onnxruntime"]["median_ms"] > 0
    code, out, exc = cli("data", "stats", cfg)
    assert code == 0 and exc is None, out
    assert "circle" in out or "square" in out


def test_data_stats_refuses_what_training_refuses(shapes_dir, tmp_path):
    """`nasdet data stats`, the command that validates a set, passed train and val naming other classes (a class
    renamed in val) that every training command refuses at once; and a cut json said "starting at at line"."""
    raw = tiny_raw(shapes_dir, tmp_path / "wd")
    val = json.loads((shapes_dir / "val" / "annotations.json").read_text())
    val["categories"][0]["name"] = val["categories"][0]["name"].upper()
    (tmp_path / "val.json").write_text(json.dumps(val))
    raw["data"]["val"]["annotations"] = str(tmp_path / "val.json")
    code, out, _ = cli("data", "stats", write_cfg(tmp_path / "renamed.yaml", raw))
    assert code == 2 and "have different classes" in out and val["categories"][0]["name"] in out, out
    text = (shapes_dir / "val" / "annotations.json").read_text()
    cut = text[:text.index('"file_name"') + 5]  # inside a string
    (tmp_path / "cut.json").write_text(cut)
    raw["data"]["val"]["annotations"] = str(tmp_path / "cut.json")
    code, out, _ = cli("data", "stats", write_cfg(tmp_path / "cut.yaml", raw))
    said = " ".join(out.split())
    assert code == 2 and "not valid json: Unterminated string starting at: line 1 column" in said and \
        "at at" not in said, said


def test_user_errors_are_one_line_naming_the_culprit(shapes_dir, tmp_path):
    raw = tiny_raw(shapes_dir, tmp_path / "wd")
    raw["train"]["epohcs"] = 3
    r = nasdet("train", write_cfg(tmp_path / "bad.yaml", raw))
    assert r.returncode == 2 and "train.epohcs" in r.stdout and "bad.yaml" in r.stdout and "Traceback" not in r.stderr
    code, out, _ = cli("train", write_cfg(tmp_path / "ok.yaml", tiny_raw(shapes_dir, tmp_path / "wd")),
                       "--set", "model.detector=yolo9")
    assert code == 2 and "model.detector" in out
    raw = tiny_raw(shapes_dir, tmp_path / "wd")
    raw["data"]["val"]["annotations"] = str(tmp_path / "missing.json")
    code, out, _ = cli("eval", write_cfg(tmp_path / "m.yaml", raw), "--ckpt", tmp_path / "none.pt")
    assert code == 2 and ("missing.json" in out or "none.pt" in out)


# `nasdet` under torchrun with spies: each rank writes a hash of the BatchNorm statistics it evaluates with;
# NASDET_FAIL_RANK makes that rank meet a data error at its first training step
DDP_SPY = """
import hashlib, os, sys
from nasdet.errors import DataError
from nasdet.train import loop
real_eval, real_step, rank = loop.evaluate_detector, loop.Trainer.train_step, os.environ["RANK"]
def evaluate(model, *a, **k):
    digest = hashlib.sha1(b"".join(b.numpy().tobytes() for b in model.buffers())).hexdigest()
    with open(os.path.join(sys.argv[1], "buffers_rank" + rank), "a") as f:
        f.write(digest + "\\n")
    return real_eval(model, *a, **k)
def train_step(self, *a, **k):
    if os.environ.get("NASDET_FAIL_RANK") == rank:
        raise DataError("images/000007.jpg (image id 7) cannot be decoded: test")
    return real_step(self, *a, **k)
loop.evaluate_detector, loop.Trainer.train_step = evaluate, train_step
from nasdet.cli import app
app(sys.argv[2:], prog_name="nasdet")
"""


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_two_processes_ddp(shapes_dir, tmp_path):
    # YOLOv3 on MobileNetV2: its last 1x1 conv gets no gradient (no level reads it), so DDP must look for unused
    # parameters; without, every YOLOv3 and DetNAS-baseline run failed at its second step
    raw = tiny_raw(shapes_dir, tmp_path / "wd", "yolov3")
    raw["model"]["backbone"] = {"name": "mobilenet_v2", "width_mult": 0.35}
    cfg = write_cfg(tmp_path / "ddp.yaml", raw)
    spy = tmp_path / "spy.py"
    spy.write_text(DDP_SPY)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(spy), str(tmp_path), "train", str(cfg),
                        "--set", "train.epochs=1"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    state_step = json.loads((tmp_path / "wd" / "baseline" / "metrics.json").read_text())["step"]
    assert state_step == 24 // (4 * 2)  # 24 images, batch 4 per process, 2 processes
    assert "2 process(es)" in r.stdout
    # both ranks evaluate (sharded) the model the checkpoint holds: rank 0's BN statistics (on CPU, without
    # SyncBatchNorm, rank 1's own were used for its half of val: metrics.json was not the checkpoint's)
    evaluated = [(tmp_path / f"buffers_rank{i}").read_text().split() for i in (0, 1)]
    assert len(evaluated[0]) == 1 and evaluated[0] == evaluated[1]
    assert "DDP looks for unused parameters each step: 3 backbone parameters get no gradient" in r.stdout
    # eval under torchrun: each rank predicts a shard, rank 0 scores and prints once (each rank evaluated all of val)
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "nasdet", "eval", str(cfg)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " ".join(r.stdout.split()).count("val mAP of") == 1, r.stdout
    # README's recipe: stages under torchrun, then one process finds them done (it refused: "written by 2
    # process(es) ... 3 total steps against 6")
    code, out, exc = cli("train", cfg, "--set", "train.epochs=1")
    assert code == 0 and exc is None, out
    assert "is complete (step 3)" in " ".join(out.split())

    # the rank that meets an error prints it before its process group is gone (it left silently, and rank 0
    # said "its error is printed above" with nothing above)
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(spy), str(tmp_path), "train", str(cfg),
                        "--work-dir", str(tmp_path / "failing")], capture_output=True, text=True, timeout=300,
                       env={**env, "NASDET_FAIL_RANK": "1"})
    assert r.returncode != 0
    assert "rank 1: images/000007.jpg (image id 7) cannot be decoded: test" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_pretrain_then_search(shapes_dir, tmp_path):
    raw = tiny_raw(shapes_dir, tmp_path / "wd")
    raw["model"]["backbone"] = {"name": "ofa_mbv3", "width_mult": 0.25}
    raw["train"].update(epochs=1, max_steps=2)
    raw["supernet"] = {"recalib_batches": 1, "report_archs": ["smallest"]}
    raw["search"] = {"strategy": "random", "confidence_resamples": 100, "num_candidates": 3, "recalib_batches": 1}
    cfg = write_cfg(tmp_path / "ofa.yaml", raw)
    code, out, _ = cli("search", cfg)
    assert code == 2 and "nasdet pretrain" in out  # the stage to run first is named
    r = nasdet("pretrain", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    code, out, exc = cli("search", cfg)
    assert code == 0 and exc is None, out
    search = tmp_path / "wd" / "search"
    assert (search / "results.csv").is_file() and (search / "best_arch.json").is_file()
    assert json.loads((search / "best_arch.json").read_text())["space_id"]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_two_processes_supernet_pretrain(shapes_dir, tmp_path):
    """DDP supernet training: sandwich steps (several backward passes), in-place distillation through the
    logits wrapper, find_unused_parameters; both ranks must train the same subnets or DDP hangs/fails."""
    raw = tiny_raw(shapes_dir, tmp_path / "wd")
    raw["model"]["backbone"] = {"name": "ofa_mbv3", "width_mult": 0.25}
    raw["train"].update(epochs=1, max_steps=2)
    raw["supernet"] = {"sampling": "sandwich", "sandwich_random": 1, "recalib_batches": 1,
                       "report_archs": ["smallest"], "distill": {"teacher": "largest"}}
    cfg = write_cfg(tmp_path / "ddp_supernet.yaml", raw)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "nasdet", "pretrain", str(cfg)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = [json.loads(x) for x in (tmp_path / "wd" / "supernet" / "log.jsonl").read_text().splitlines()]
    assert any("s2/distill" in row for row in log)
    # tune from it under torchrun, with the inherited weights' evaluation (tune.eval_initial, the default): only
    # rank 0 evaluated, its gather met rank 1's DDP setup and both crashed
    from nasdet.config import validate_config
    from nasdet.models.supernet import build_supernet
    from nasdet.space import save_arch

    _, space = build_supernet(validate_config(raw), 8)
    save_arch(tmp_path / "wd" / "search" / "best_arch.json", space.smallest(), space)
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "nasdet", "tune", str(cfg),
                        "--set", "tune.recalib_batches=1"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    initial = json.loads((tmp_path / "wd" / "tune" / "initial_metrics.json").read_text())
    assert initial["val_images"] == 8 and "AP" in initial["metrics"]
    assert r.stdout.count("inherited weights before training") == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone too
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _sigint_as_by_default() -> None:
    """(A subprocess's ``preexec_fn``.) A shell starts a background job with SIGINT ignored (CI under nohup ... &),
    and Python then leaves it so: the tests that press Ctrl-C need it back."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _launcher_of_fake_workers(tmp_path, script: str, **popen):
    """A `--workers 2` launcher whose workers run ``script`` (sh) in place of nasdet, each writing its pid to
    tmp_path/pids; returned once both have started."""
    import time

    fake = tmp_path / "fake_python.sh"  # stands in for the Python that would run each worker
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    launcher = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; import nasdet.cli as cli; cli.terminate_as_interrupt(); "
        f"sys.executable = {str(fake)!r}; cli._launch_workers('search', Path('c.yaml'), None, [], 2, [])")],
        stdout=subprocess.PIPE, text=True, preexec_fn=_sigint_as_by_default, **popen)
    deadline = time.time() + 60
    while time.time() < deadline and len((tmp_path / "pids").read_text().split() if (tmp_path / "pids").exists() else []) < 2:
        time.sleep(0.2)
    return launcher


def test_workers_stopped_by_a_ctrl_c_the_launcher_ignored_are_interrupted_not_failed(tmp_path):
    """`nasdet search --workers 2 &` from a script (SIGINT ignored by the launcher) and a SIGINT to the group: the
    workers stopped gracefully (exit 130) and the launcher said "search worker(s) [0, 1] failed", exit 1 (qa_s32)."""
    launcher = _launcher_of_fake_workers(tmp_path, f"echo $$ >> {tmp_path / 'pids'}\nsleep 1\nexit 130")
    out = " ".join(launcher.communicate(timeout=60)[0].split())
    assert "interrupted: the workers are stopped" in out and "failed" not in out and launcher.returncode != 0


def test_stopping_the_worker_launcher_stops_its_workers(tmp_path):
    """`nasdet search/diagnose --workers N` killed with SIGTERM (a job scheduler's stop) takes its workers
    with it; before, they ran on unseen, reparented to init."""
    import signal
    import time

    launcher = _launcher_of_fake_workers(tmp_path, f"echo $$ >> {tmp_path / 'pids'}\nexec sleep 120")
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=60) != 0
    # and says so (a Ctrl-C ended every process without a word)
    assert "interrupted: the workers are stopped" in " ".join(launcher.stdout.read().split())
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


_STOPPING_WORKER = """
import os, sys, time
from nasdet.cli import terminate_as_interrupt
terminate_as_interrupt()
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
try:
    time.sleep(120)
except KeyboardInterrupt:
    time.sleep(1.5)  # what a worker does on Ctrl-C: records its trial, finishes and saves its training step
    print("saved", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_lets_the_launchers_workers_stop_by_themselves(tmp_path):
    """Ctrl-C reaches a `--workers N` launcher and its workers alike (one process group): the launcher no longer
    sends them SIGTERM on top while they stop (a search worker printed "Exception ignored ... KeyboardInterrupt"
    tracebacks from its shutdown, a diagnose worker's training stopped before its save); and a SIGTERM that comes
    while a command already stops is not raised again."""
    import signal
    import subprocess
    import sys
    import time

    worker = tmp_path / "worker.py"
    worker.write_text(_STOPPING_WORKER)
    launcher = _launcher_of_fake_workers(
        tmp_path, f"exec {sys.executable} {worker} {tmp_path / 'pids'} 2>>{tmp_path / 'err'}", stderr=subprocess.PIPE,
        start_new_session=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert len((tmp_path / "pids").read_text().split()) == 2
    os.killpg(launcher.pid, signal.SIGINT)  # a terminal's Ctrl-C
    out, _ = launcher.communicate(timeout=60)
    assert "interrupted: the workers are stopped" in " ".join(out.split())
    assert out.count("saved") == 1  # worker 0's stdout (the others' is quiet); both stopped in their own time
    assert "Traceback" not in (tmp_path / "err").read_text() if (tmp_path / "err").exists() else True
    # a scheduler's SIGTERM to a command that already stops on Ctrl-C is not raised inside its stopping
    run = subprocess.Popen([sys.executable, str(worker), str(tmp_path / "pids")], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
                           preexec_fn=_sigint_as_by_default)
    while len((tmp_path / "pids").read_text().split()) < 3:
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    time.sleep(0.5)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "saved" in out and "Traceback" not in err, err


def test_commands_that_are_not_training_refuse_torchrun(shapes_dir, tmp_path, monkeypatch):
    """Under torchrun every rank ran search / export / cost / diagnose whole: two uncoordinated searches, two
    exports each timed while the other took the cores, every line twice (QA, session 27)."""
    cfg = write_cfg(tmp_path / "c.yaml", tiny_raw(shapes_dir, tmp_path / "wd"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for command, instead in (("search", "--workers N"), ("export", "without torchrun"), ("cost", "without torchrun"),
                             ("diagnose", "--workers N")):
        code, out, exc = cli(command, cfg)
        flat = " ".join(out.split())
        assert code == 2 and exc is None and f"nasdet {command} runs in one process, not under torchrun" in flat, out
        assert instead in flat
    assert not (tmp_path / "wd").exists()


def test_a_file_where_a_folder_is_made_is_said_so(shapes_dir, tmp_path):
    """A stage's ckpt/ replaced by a file: the error was "...ckpt: file exists"."""
    raw = tiny_raw(shapes_dir, tmp_path / "wd")
    raw["train"]["max_steps"] = 1
    cfg = write_cfg(tmp_path / "c.yaml", raw)
    (tmp_path / "wd" / "baseline").mkdir(parents=True)
    (tmp_path / "wd" / "baseline" / "ckpt").write_text("x")
    code, out, exc = cli("train", cfg)
    assert code == 2 and exc is None, out
    assert "a file is where nasdet makes a folder: move it away" in " ".join(out.split()), out


def test_sigterm_stops_a_command_as_ctrl_c_does(tmp_path):
    """A scheduler's SIGTERM ended the process on the spot: the INT8 export's quantization-aware tuning left its
    temp folder in export/ (Ctrl-C cleaned it). `nasdet`'s entry point makes SIGTERM an interrupt, so ``with``
    blocks run; not under torchrun (a rank in a collective would not reach Python)."""
    import signal
    from pathlib import Path

    script = (
        "import sys, tempfile, time; import nasdet.cli as cli\n"
        "@cli.app.command('hold')\n"
        "def hold(folder: str):\n"
        "    with tempfile.TemporaryDirectory(dir=folder) as t:\n"
        "        print(t, flush=True); time.sleep(120)\n"
        f"sys.argv = ['nasdet', 'hold', {str(tmp_path)!r}]\n"
        "cli.main()\n")
    for world, left in (("1", False), ("2", True)):
        run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "WORLD_SIZE": world})
        try:
            held = run.stdout.readline().strip()
            assert held.startswith(str(tmp_path)), held + run.stdout.read()
            run.send_signal(signal.SIGTERM)
            run.wait(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
        assert Path(held).exists() == left
        assert (run.returncode == -signal.SIGTERM) == left  # stopped by the signal itself only under torchrun


@pytest.mark.parametrize("command", ["search", "pretrain"])
def test_search_and_pretrain_say_the_report_is_older_than_what_they_wrote(shapes_dir, tmp_path, monkeypatch, command):
    """train, eval, tune and export said that the pipeline's report.md was made before the records they rewrote;
    search (its pareto.json, confidence.json) and pretrain (supernet/metrics.json) said nothing."""
    import time

    import nasdet.stages.pretrain
    import nasdet.stages.search

    cfg = write_cfg(tmp_path / "tiny.yaml", tiny_raw(shapes_dir, tmp_path / "wd"))
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "report.md").write_text("# an earlier report\n")
    time.sleep(0.01)
    written = tmp_path / "wd" / ("search/pareto.json" if command == "search" else "supernet/metrics.json")

    def stage(*args, **kwargs):
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text("{}")

    monkeypatch.setattr(nasdet.stages.search, "run_search", stage)
    monkeypatch.setattr(nasdet.stages.pretrain, "run_pretrain", stage)
    code, out, exc = cli(command, cfg)
    said = " ".join(out.split())
    assert code == 0 and exc is None, out
    assert "note:" in said and f"is older than {written.relative_to(tmp_path / 'wd')}" in said, said


_LAUNCHED_WORKER = """
import os, sys, time
from nasdet.cli import terminate_as_interrupt
from nasdet.signals import die_with_launcher
terminate_as_interrupt()
die_with_launcher()
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(120)
"""


def test_the_launchers_workers_end_when_it_is_killed_hard(tmp_path):
    """`kill -9` of the `--workers N` launcher (an OOM kill, a scheduler's hard kill) left its workers scoring on with
    PPID 1, no one to write the results; they now end with it, as torchrun's ranks do."""
    import signal
    import time

    worker = tmp_path / "worker.py"
    worker.write_text(_LAUNCHED_WORKER)
    launcher = _launcher_of_fake_workers(tmp_path, f"exec {sys.executable} {worker} {tmp_path / 'pids'}",
                                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)
