"""``nasdet`` command line. Every experiment command takes ``CONFIG [--work-dir D] [--set key=value ...]``."""
from __future__ import annotations

import errno
import functools
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from .errors import ConfigError, NasdetError
from .progress import progress_bar
from .threads import LOCAL_PROCESSES_ENV
from .signals import LAUNCHER_PID_ENV, die_with_launcher

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Neural architecture search for object detectors.")
data_app = typer.Typer(no_args_is_help=True, help="Data sets: the embedded synthetic set, statistics.")
app.add_typer(data_app, name="data")
console = Console()

SetOpt = typer.Option(None, "--set", help="Override a config key: --set train.epochs=2 (repeatable).")
WorkDirOpt = typer.Option(None, "--work-dir", help="Work dir (default: work_dir of the config).")
# a worker that --workers started: it scores or trains, and its launcher writes and prints the results once
LaunchedOpt = typer.Option(False, "--launched", hidden=True)


def _user_errors(fn):
    """Bad input ends with one red line naming the file/key/value and exit code 2 (a failed export check:
    exit code 1); a bug keeps its traceback. NASDET_DEBUG=1 shows the traceback of any error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NasdetError as e:
            _fail(e, e.label, e.exit_code)
        except OSError as e:  # a file or folder that cannot be read or written: the user's environment
            _fail(e, "error", 2, describe_os_error(e))
        except RuntimeError as e:
            if not _peer_stopped(e):
                raise
            _fail(e, "error", 1, f"another process of this torchrun stopped (its error is printed above); rank "
                                 f"{_torchrun_rank()} stops with it")
        finally:
            # after the error is printed: the other ranks' collectives fail once this group is gone, and they
            # say "its error is printed above" (a rank that left first exited silently, see _fail)
            _leave_group()

    return wrapper


def _leave_group() -> None:
    """Destroy torchrun's process group if this process joined one (no torch import for a CLI that has none)."""
    if _group_joined():
        sys.modules["torch.distributed"].destroy_process_group()


def _one_process(command: str, instead: str) -> None:
    """Commands other than training run in one process: under torchrun every rank ran the whole command (two
    uncoordinated searches, two exports each timed while the other took the cores, every line twice)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"nasdet {command} runs in one process, not under torchrun (only train, pretrain, tune, "
                          f"classify and eval use its processes): {instead}")


def _say_if_report_stale(cfg, work_dir: Optional[Path]) -> None:
    """After a stage's own command: the pipeline's report.md, if any, made from records this command rewrote."""
    from .stages.report import stale_report_note
    from .workdir import WorkDir

    if _torchrun_rank() == 0 and (note := stale_report_note(WorkDir.of(cfg, work_dir))):
        console.print(Text(f"note: {note}", style="yellow"), soft_wrap=True)


def _torchrun_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _group_joined() -> bool:
    """Whether this process joined torchrun's process group (no torch import for a CLI that has none)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _peer_stopped(e: RuntimeError) -> bool:
    """A collective failed because another rank of the same torchrun exited (its own error says why): gloo's
    "Connection closed by peer", NCCL's / the store's "Connection reset"."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    text = str(e)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def _fail(e: BaseException, label: str, exit_code: int, message: Optional[str] = None) -> None:
    if os.environ.get("NASDET_DEBUG"):
        if getattr(e, "worker_traceback", None):
            print(e.worker_traceback, file=sys.stderr)
        raise e
    rank = _torchrun_rank()
    if rank > 0 and not _group_joined():  # under torchrun, before training: every rank meets the same error
        raise typer.Exit(exit_code)
    message = message if message is not None else str(e)
    print_error(f"rank {rank}: {message}" if rank > 0 and not message.startswith("another process") else message,
                label)
    raise typer.Exit(exit_code)


def print_error(message: str, label: str = "error") -> None:
    """One line, printed as plain text: brackets in paths or values (``data[v2]``, ``[1, 2, 3, 4]``,
    ``ssd/lite``) are shown as they are, never read as rich markup."""
    line = " ".join(message.split())  # one line even when a library's message had several
    console.print(Text.assemble((f"{label}:", "bold red"), " ", line), soft_wrap=True, highlight=False)


def describe_os_error(e: OSError) -> str:
    """``/a/b: permission denied (check ...)`` rather than ``[Errno 13] Permission denied: '/a/b'``."""
    what = e.strerror or type(e).__name__
    if e.filename is None:
        return str(e) or what
    where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    hint = {PermissionError: " (check its permissions, or choose another place)",
            NotADirectoryError: " (a part of the path is a file, not a folder)",
            FileExistsError: " (a file is where nasdet makes a folder: move it away)"}.get(type(e), "")
    if e.errno == errno.ENOSPC:  # every write is atomic: the file's previous version, if any, is intact
        hint = " (free space on that disk or choose another folder, then rerun: finished work is kept)"
    return f"{where}: {what.lower()}{hint}"


def _load(config: Path, overrides: Optional[List[str]]):
    from .config import load_config  # here, not at the top: torch takes ~3 s to import, which --help and
    # `data make-synthetic` do without

    return load_config(config, overrides or [])


@data_app.command("make-synthetic")
@_user_errors
def make_synthetic_cmd(
    out: Path = typer.Argument(..., help="Output folder (train/ and val/ in COCO format)."),
    train: int = typer.Option(2000, "--train", min=1, help="Training images."),
    val: int = typer.Option(500, "--val", min=1, help="Validation images."),
    size: int = typer.Option(256, "--size", min=32, max=4096, help="Image width in pixels (height 75-100 % of it)."),
    seed: int = typer.Option(0, "--seed", min=0),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Processes (default: up to 2)."),
    skip_existing: bool = typer.Option(False, "--skip-existing",
                                       help="Do nothing if OUT already holds this set (same arguments and generator version)."),
    data_format: str = typer.Option("coco", "--format",
                               help="coco, or yolo: also <split>/labels/*.txt and OUT/data.yaml (data.format: yolo), "
                                    "or imagefolder: one shape per image in <split>/<class>/ (for nasdet classify; "
                                    "e.g. --size 48)."),
):
    """Generate the embedded shapes data set (no download)."""
    from .data.synthetic import existing_matches, make_synthetic

    if data_format not in ("coco", "yolo", "imagefolder"):
        raise ConfigError(f"--format must be coco, yolo or imagefolder, got {data_format!r}")
    if data_format == "imagefolder":
        _make_imagefolder(out, train, val, size, seed)
        return
    if skip_existing and existing_matches(out, train, val, size, seed):
        console.print(f"{escape(str(out))}: synthetic data set already present")
        paths = None
    else:
        with progress_bar(console, TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          label="generated images", every=max(1, (train + val) // 10)) as p:
            task = p.add_task("", total=train + val)
            paths = make_synthetic(out, train, val, size, seed, workers=workers,
                                   progress=lambda done, total: p.update(task, completed=done, total=total))
        console.print(f"wrote {escape(str(paths['train']))} ({train} images) and {escape(str(paths['val']))} ({val} images)")
    if data_format == "yolo":
        from .data.coco import load_coco
        from .data.yolo import write_yolo

        # The YOLO labels sit next to the COCO json, over the same images: both formats load.
        splits = {s: load_coco(out / s / "annotations.json", out / s / "images")
                  for s, n in (("train", train), ("val", val)) if n}
        yaml_file = write_yolo(splits, out, copy_images=False)
        console.print(f"wrote YOLO labels under {escape(str(out))}/*/labels and {escape(str(yaml_file))}")


def _make_imagefolder(out: Path, train: int, val: int, size: int, seed: int) -> None:
    from .data.synthetic_classes import make_synthetic_imagefolder

    with progress_bar(console, TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      label="generated images", every=max(1, (train + val) // 10)) as p:
        task = p.add_task("", total=train + val)
        folders = make_synthetic_imagefolder(out, train, val, size, seed,
                                             progress=lambda done, total: p.update(task, completed=done, total=total))
    console.print(f"wrote {folders['train']} ({train} images) and {folders['val']} ({val} images): classify.root: {out}")


@data_app.command("to-yolo")
@_user_errors
def to_yolo_cmd(config: Path, out: Path = typer.Argument(..., help="Output folder (data.yaml, <split>/images, "
                                                                   "<split>/labels)."),
                set_: Optional[List[str]] = SetOpt,
                copy: bool = typer.Option(False, "--copy", help="Copy the images (default: hard links to the "
                                                                "originals where the file system allows).")):
    """Write the config's train and val sets (any format) as a YOLO data set; images are hard-linked to the
    originals where the file system allows (editing one in place edits the original; --copy: independent
    copies), else copied; crowd / difficult boxes are left out. A rerun into OUT replaces and removes only the
    files an earlier run wrote there."""
    from .data.yolo import hard_linked_images, write_yolo
    from .data.build import load_split

    cfg = _load(config, set_)
    yaml_file = write_yolo({s: load_split(cfg, s) for s in ("train", "val")}, out, hard_link=not copy)
    console.print(f"wrote {escape(str(yaml_file))}: use data.format: yolo, data.data_yaml: {escape(str(yaml_file))}")
    linked = hard_linked_images(out)
    if linked:
        console.print(f"{linked} image{'s are' if linked != 1 else ' is'} hard-linked to the originals: editing "
                      "one in place edits your data set (--copy writes independent copies)")


@data_app.command("stats")
@_user_errors
def data_stats_cmd(config: Path, set_: Optional[List[str]] = SetOpt,
                   split: str = typer.Option("all", "--split", help="train | val | all")):
    """Images, boxes per class and box sizes of the config's data sets."""
    from .data.stats import dataset_stats, stats_tables
    from .data.build import check_same_classes, load_split, warn_about_the_splits

    cfg = _load(config, set_)
    opened = {}
    for name in (("train", "val") if split == "all" else (split,)):
        if name not in ("train", "val"):
            raise ConfigError(f"--split must be train, val or all, got {split!r}")
        ds = opened[name] = load_split(cfg, name)
        ds.check_images_open()  # a validation command: a file that is not an image is named now, not in an epoch
        for table in stats_tables(dataset_stats(ds), f"{name}: {ds.source}"):
            console.print(table)
    if len(opened) == 2:  # what training refuses or warns about (val not held out, classes without boxes), said here
        check_same_classes(opened["train"], opened["val"])
        warn_about_the_splits(opened["train"], opened["val"])


@app.command("train")
@_user_errors
def train_cmd(config: Path, work_dir: Optional[Path] = WorkDirOpt, set_: Optional[List[str]] = SetOpt):
    """Train the config's detector (the baseline); resumes from baseline/ckpt/last.pt."""
    from .stages.baseline import run_baseline

    cfg = _load(config, set_)
    run_baseline(cfg, work_dir, console=console)
    _say_if_report_stale(cfg, work_dir)


@app.command("pretrain")
@_user_errors
def pretrain_cmd(config: Path, work_dir: Optional[Path] = WorkDirOpt, set_: Optional[List[str]] = SetOpt):
    """Train the weight-sharing supernet (path sampling, progressive shrinking, distillation);
    resumes from supernet/ckpt/last.pt."""
    from .stages.pretrain import run_pretrain

    cfg = _load(config, set_)
    run_pretrain(cfg, work_dir, console=console)
    _say_if_report_stale(cfg, work_dir)


@app.command("classify")
@_user_errors
def classify_cmd(config: Path, work_dir: Optional[Path] = WorkDirOpt, set_: Optional[List[str]] = SetOpt):
    """Train model.backbone as an image classifier on classify.root (ImageFolder): the supernet (DetNAS step 1)
    or the subnet classify.arch (step 4); writes classify/backbone.pt; resumes from classify/ckpt/last.pt."""
    from .stages.classify import run_classify

    cfg = _load(config, set_)
    run_classify(cfg, work_dir, console=console)


@app.command("search")
@_user_errors
def search_cmd(config: Path, work_dir: Optional[Path] = WorkDirOpt, set_: Optional[List[str]] = SetOpt,
               storage: Optional[str] = typer.Option(None, "--storage",
                                                     help="Optuna storage URL (e.g. postgresql://...) or journal file path."),
               worker: int = typer.Option(0, "--worker", help="This process's index among workers sharing the study."),
               workers: int = typer.Option(1, "--workers", min=1,
                                           help="Start N local worker processes on the study (one GPU each if any)."),
               launched: bool = LaunchedOpt):
    """Score subnets of the trained supernet under the budget (evolution, NSGA-II or random on Optuna);
    rerunning continues the study. Several processes (here via --workers, or on other machines with
    --storage) share one study."""
    from .stages.search import check_one_process, run_search

    if launched:
        die_with_launcher()
    _one_process("search", "start its workers with `nasdet search CONFIG --workers N` (one per GPU), or one `nasdet "
                 "search` per machine on a shared --storage")
    cfg = _load(config, set_)
    check_one_process(cfg, worker, workers)  # before any worker starts
    if workers > 1:
        from .search.storage import open_storage
        from .stages.search import check_search_inputs

        w = check_search_inputs(cfg, work_dir, storage)
        url = storage or cfg.search.storage
        if url and "://" in str(url):  # the schema made once, here: N workers making it at once collided
            if str(url).startswith("sqlite"):
                console.print(Text(f"warning: {workers} workers on SQLite ({url}): Optuna's FAQ says it is not safe "
                                   "for parallel writers; use a journal file (the default) or PostgreSQL",
                                   style="yellow"), soft_wrap=True)
            open_storage(url, w.search.root)
        _launch_workers("search", config, work_dir, set_ or [], workers, ["--storage", storage] if storage else [])
    run_search(cfg, work_dir=work_dir, storage=storage, console=console, worker=worker, outputs=not launched)
    if not launched:  # (a worker of --workers leaves it to its launcher)
        _say_if_report_stale(cfg, work_dir)


def _launch_workers(command: str, config: Path, work_dir: Optional[Path], overrides: List[str], workers: int,
                    extra: List[str]) -> None:
    """``workers`` processes of ``nasdet <command>``, each on its own GPU when there are GPUs, else with
    the CPU's threads split between them; the stage's own store shares the work (search: the Optuna
    storage; diagnose: claim files), no scheduler of ours. Returns when all have finished."""
    import subprocess

    import torch

    gpus = torch.cuda.device_count()
    procs: list = []

    def spawn():
        for i in range(workers):
            cmd = [sys.executable, "-m", "nasdet.cli", command, str(config), "--worker", str(i), "--launched", *extra]
            if work_dir:
                cmd += ["--work-dir", str(work_dir)]
            for item in overrides:
                cmd += ["--set", item]
            env = dict(os.environ, **{LOCAL_PROCESSES_ENV: str(workers)})  # each caps its threads at cores // workers
            env[LAUNCHER_PID_ENV] = str(os.getpid())  # (each ends with its launcher: signals.die_with_launcher)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL if i else None))
        console.print(f"started {workers} {command} workers" + (f" on {min(workers, gpus)} GPU(s)" if gpus else " on CPU"))

    failed = _wait_for_workers(procs, spawn)
    if failed and all(procs[i].returncode == 2 for i in failed):  # bad input: each said why, rerunning cannot help
        print_error(f"{command} worker(s) {failed} stopped on the error above")
        raise typer.Exit(2)
    if failed:
        print_error(f"{command} worker(s) {failed} failed; rerun the same command to continue")
        raise typer.Exit(1)


WORKERS_STOP_GRACE_S = 30.0  # after Ctrl-C, how long the launcher lets its workers stop by themselves


def _wait_for_workers(procs: list, spawn=None) -> list[int]:
    """Wait for the worker processes; the indices of those that failed. Stopping the launcher (Ctrl-C, or
    SIGTERM from a job scheduler) stops its workers too, instead of leaving them running unseen; each
    keeps what it finished (trials in the study, diagnose records) and a rerun continues."""
    import signal
    import subprocess
    import time

    terminated: list[int] = []

    def stop(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    from .signals import for_this_process

    previous = signal.signal(signal.SIGTERM, for_this_process(stop))
    try:
        if spawn is not None:  # started under the handler: a SIGTERM while they start orphans none of them
            spawn()
        # poll reaps each worker as it exits: a wait in index order left a killed worker a zombie, whose claim
        # looked live to the others
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
        failed = [i for i, p in enumerate(procs) if p.returncode != 0]
        if failed and all(procs[i].returncode in (130, -signal.SIGINT) for i in failed):
            # each stopped on a Ctrl-C the launcher did not see (started by a script, SIGINT ignored, the group's
            # SIGINT then reached the workers alone): interrupted, not failed
            raise KeyboardInterrupt
        return failed
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) and not terminated:
            # Ctrl-C: the terminal sent SIGINT to the workers too (one process group), and each stops by itself (a
            # trial recorded, a training step saved); a SIGTERM on top stopped a training before its save and printed
            # tracebacks from a search worker's shutdown. Those still running after the grace get it.
            try:
                deadline = time.monotonic() + WORKERS_STOP_GRACE_S
                while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                    time.sleep(0.1)
            except KeyboardInterrupt:  # a second Ctrl-C: stop them now
                pass
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if isinstance(e, KeyboardInterrupt):  # (it ended without a word)
            console.print(Text("interrupted: the workers are stopped, each keeping what it finished; rerun the same "
                               "command to continue", style="yellow"), soft_wrap=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command("diagnose")
@_user_errors
def diagnose_cmd(config: Path, work_dir: Optional[Path] = WorkDirOpt, set_: Optional[List[str]] = SetOpt,
                 archs: Optional[int] = typer.Option(None, "--archs", help="K archs spread over the MACs range (diagnose.archs)."),
                 epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs of the short stand-alone recipe (diagnose.epochs)."),
                 worker: int = typer.Option(0, "--worker", help="This process's index among workers sharing the work dir."),
                 workers: int = typer.Option(1, "--workers", min=1, help="Start N local worker processes."),
                 launched: bool = LaunchedOpt):
    """Does the supernet rank archs as they rank trained alone? K archs stratified by MACs are scored by
    the supernet (as search does), by MACs, params and zero-cost proxies, and trained alone briefly;
    writes diagnose/results.csv, summary.json (Kendall tau, Spearman rho with 90 % intervals), rank.png.
    One arch is trained twice (diagnose.noise_check): when its two seeds differ as much as the archs do,
    it says the target is noise. Rerunning continues."""
    from .stages.diagnose import run_diagnose

    if launched:
        die_with_launcher()
    _one_process("diagnose", "start its workers with `nasdet diagnose CONFIG --workers N`")

    overrides = list(set_ or []) + ([f"diagnose.archs={archs}"] if archs is not None else []) \
        + ([f"diagnose.epochs={epochs}"] if epochs is not None else [])
    cfg = _load(config, overrides)
    if workers > 1:
        run_diagnose(cfg, work_dir, console=console, plan_only=True)  # once, not in every worker
        _launch_workers("diagnose", config, work_dir, overrides, workers, [])
    run_diagnose(cfg, work_dir, console=console, worker=worker, outputs=not launched)


@app.command("eval")
@_user_errors
def eval_cmd(config: Path, work_dir: Optional[Path] = WorkDirOpt, set_: Optional[List[str]] = SetOpt,
             ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (default: baseline/ckpt/last.pt)."),
             keep_aspect: Optional[str] = typer.Option(
                 None, "--keep-aspect", metavar="MIN,MAX",
                 help="Resize keeping the aspect ratio (shorter side MIN, longer at most MAX: torchvision's Faster "
                      "R-CNN / RetinaNet / FCOS test at 800,1333, MMDetection's yolov3 at 416,416), not to the "
                      "square model.input_size: the AP an imported detector had where it was tested; written to "
                      "eval/<stage>_<name>_keep_aspect_MINxMAX_metrics.json.")):
    """COCO metrics (AP, AP50, AP75, APs, APm, APl) and per-class AP on the val set; writes baseline/metrics.json, or
    eval/<stage>_<name>_metrics.json for a --ckpt (a stage's own record is never overwritten)."""
    from .stages.baseline import run_eval

    cfg = _load(config, set_)
    run_eval(cfg, work_dir, ckpt and ckpt.expanduser(), console=console, keep_aspect=_min_max(keep_aspect))
    _say_if_report_stale(cfg, work_dir)


def _min_max(value: Optional[str]) -> Optional[tuple[int, int]]:
    """``--keep-aspect MIN,MAX`` as two sizes (``800,1333``; one number: both)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) in (1, 2) and all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):  # ('²' is a digit)
        lo, hi = int(parts[0]), int(parts[-1])
        if lo <= hi:
            return lo, hi
    raise typer.BadParameter(f"{value!r}: give the shorter side's size and the longer side's largest, MIN <= MAX, "
                             "e.g. 800,1333", param_hint="--keep-aspect")


@app.command("cost")
@_user_errors
def cost_cmd(config: Path, work_dir: Optional[Path] = WorkDirOpt, set_: Optional[List[str]] = SetOpt,
             ckpt: Optional[Path] = typer.Option(None, "--ckpt"),
             no_latency: bool = typer.Option(False, "--no-latency", help="Count MACs/params only.")):
    """MACs and params (backbone, whole detector) and measured latency at batch 1."""
    from .stages.baseline import run_cost

    _one_process("cost", "run it without torchrun (it times the model: the other ranks would share its cores)")
    run_cost(_load(config, set_), work_dir, ckpt and ckpt.expanduser(), latency=not no_latency, console=console)


@app.command("tune")
@_user_errors
def tune_cmd(config: Path, work_dir: Optional[Path] = WorkDirOpt, set_: Optional[List[str]] = SetOpt):
    """Train the found architecture (tune.arch, else search/best_arch.json) from the supernet's weights
    or from scratch, with the baseline's recipe; after a darts search, the detector with the searched
    towers (search/genotype.json); resumes from tune/ckpt/last.pt."""
    from .stages.tune import run_tune

    cfg = _load(config, set_)
    run_tune(cfg, work_dir, console=console)
    _say_if_report_stale(cfg, work_dir)


@app.command("export")
@_user_errors
def export_cmd(config: Path, work_dir: Optional[Path] = WorkDirOpt, set_: Optional[List[str]] = SetOpt,
               raw: bool = typer.Option(False, "--raw", help="Stop before box decoding and NMS (head outputs)."),
               source: Optional[str] = typer.Option(None, "--source", help="tune (default) or baseline."),
               int8: bool = typer.Option(False, "--int8", help="Also write <source>_int8.onnx (onnxruntime static "
                                         "quantization of the network) with both files' val mAP and latency.")):
    """The tuned model to ONNX (end to end: resize, normalise, decode, NMS), checked against torch on
    val images, timed in onnxruntime, and its cost checked against the search budget; with --int8 (or
    export.int8) also quantized to INT8, both files scored on val through onnxruntime."""
    from .stages.export import run_export

    _one_process("export", "run it without torchrun (it times the model: the other ranks would share its cores)")
    if source is not None and source not in ("tune", "baseline"):
        raise typer.BadParameter(f"--source must be tune or baseline, got {source!r}")
    cfg = _load(config, set_)
    run_export(cfg, work_dir, raw=raw, source=source, console=console, int8=int8 or None)
    _say_if_report_stale(cfg, work_dir)


@app.command("pipeline")
@_user_errors
def pipeline_cmd(config: Path, work_dir: Optional[Path] = WorkDirOpt, set_: Optional[List[str]] = SetOpt):
    """baseline -> pretrain -> search -> tune -> export -> report.md; finished stages are skipped and an
    interrupted one resumes, so rerunning continues."""
    from .pipeline import run_pipeline

    run_pipeline(_load(config, set_), work_dir, console=console)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """nasdet's own warnings (about the user's data, config or run) as one ``warning: ...`` line, like its errors,
    not Python's two lines quoting nasdet's source; a library's warnings keep Python's format (where it came
    from helps there)."""
    out = file if file is not None else sys.stderr
    if out is None:
        return
    if issubclass(category, UserWarning) and os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
        text = "warning: " + " ".join(str(message).split()) + "\n"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    try:
        out.write(text)
    except OSError:  # stderr closed (a pipe whose reader went away): as Python's own showwarning does
        pass


def terminate_as_interrupt() -> None:
    """A scheduler's SIGTERM stops a one-process command as Ctrl-C does: its ``with`` blocks and ``finally``s run
    (the INT8 export's tuning left its temp folder in export/, a search its trial running), where SIGTERM's default
    ended the process on the spot. Training installs its own (stop after the step, save). Under torchrun the
    agent's SIGTERM to the other ranks keeps its default: a rank waiting in a collective would never reach Python
    to raise."""
    import signal

    from .signals import for_this_process

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    stopping: list[int] = []

    def interrupt(signum, frame):
        if stopping and signum == signal.SIGTERM:
            # already stopping on an earlier Ctrl-C or SIGTERM (a search worker's, then its launcher's): raised again
            # inside the interpreter's shutdown it printed "Exception ignored ... KeyboardInterrupt" tracebacks
            return
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, for_this_process(interrupt))
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (Python's: KeyboardInterrupt, as here)
        # not for_this_process: a forked child raises KeyboardInterrupt as Python's own handler would, which torch's
        # loader workers catch to end quietly (killed by the signal instead, their parent's loader failed with
        # "DataLoader worker ... killed by signal: Interrupt")
        signal.signal(signal.SIGINT, interrupt)


def main() -> None:  # pragma: no cover
    warnings.showwarning = show_warning
    terminate_as_interrupt()
    app(prog_name="nasdet")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
