"""The work dir's layout: the one place that knows each stage's files, when a stage is complete, and the
"run X first" error a later stage raises when an earlier one's output is missing.

    work_dir/config.yaml            the resolved config that ran (config.nasdet.yaml when config.yaml is not nasdet's)
    classify/  ckpt/last.pt, backbone.pt (the backbone alone, for model.backbone.checkpoint), metrics.json, log.jsonl
    baseline/  ckpt/last.pt, metrics.json, cost.json, log.jsonl
    supernet/  ckpt/last.pt, metrics.json, space.json, log.jsonl
    search/    study.journal, results.csv, best_arch.json (with the search's predicted costs),
               confidence.json, pareto.json, pareto.png, latency_lut.json; darts: genotype.json/.log, alphas.jsonl, ckpt/;
               gradient: gradient_state.pt, searched_arch.json
    tune/      arch.json (a subnet, or FAD genotypes as {"head.genotype": ..}), ckpt/last.pt, initial_metrics.json, metrics.json, log.jsonl
    controls/  archs.json (the report's control archs), <name>/ (each tuned as tune/ is)
    export/    <source>.onnx, <source>_int8.onnx (--int8), <source>.json (parity, latency, INT8 mAP, budget, settings:
               what it was made with), classes.json
    diagnose/  the diagnose command's records
    report.md, report.json, pareto.png

Only paths and records live here (no torch, no models): every layer may import it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import MissingCheckpoint, StageOrderError, WorkDirBusy
from .files import write_json_atomic
from .user_data import refuse_output_in_data

BASELINE, SUPERNET, SEARCH, TUNE, EXPORT, DIAGNOSE, EVAL = "baseline", "supernet", "search", "tune", "export", \
    "diagnose", "eval"
CLASSIFY = "classify"
CONTROLS = "controls"  # the report's control archs, each tuned like the found one
CKPT_DIR = "ckpt"
LAST_CKPT = "last.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
LOCK_FILE = "writer.lock"  # every stage folder a process trains into (WriterLock)
# the search stage's files
STUDY_FILE = "study.journal"
RESULTS_CSV = "results.csv"
BEST_ARCH = "best_arch.json"
PARETO_JSON = "pareto.json"
PARETO_PNG = "pareto.png"
CONFIDENCE_JSON = "confidence.json"  # the top candidates' AP bootstrapped over the split's images
LATENCY_LUT = "latency_lut.json"
GENOTYPE_JSON = "genotype.json"
GENOTYPE_LOG = "genotype.log"
ALPHAS_LOG = "alphas.jsonl"
GRADIENT_STATE = "gradient_state.pt"
GRADIENT_LOG = "gradient.jsonl"
SEARCHED_ARCH = "searched_arch.json"
# the other stages'
SPACE_JSON = "space.json"  # supernet/
COST_JSON = "cost.json"  # baseline/ (nasdet cost)
ARCH_JSON = "arch.json"  # tune/
INITIAL_METRICS = "initial_metrics.json"  # tune/
CLASSES_JSON = "classes.json"  # export/
BACKBONE_PT = "backbone.pt"  # classify/

# the stage that writes each folder, and the command that runs it (for "run X first")
_PRODUCER = {BASELINE: ("baseline", "nasdet train CONFIG"), SUPERNET: ("pretrain", "nasdet pretrain CONFIG"),
             SEARCH: ("search", "nasdet search CONFIG"), TUNE: ("tune", "nasdet tune CONFIG"),
             EXPORT: ("export", "nasdet export CONFIG"), DIAGNOSE: ("diagnose", "nasdet diagnose CONFIG"),
             EVAL: ("eval", "nasdet eval CONFIG"), CLASSIFY: ("classify", "nasdet classify CONFIG")}


def write_json(path: Path, obj) -> None:
    """Write ``obj`` atomically (a reader never sees half a file)."""
    write_json_atomic(path, obj)


def checkpoint_in(stage_dir: str | Path) -> Path:
    """``<stage_dir>/ckpt/last.pt``: where a trainer writing to ``stage_dir`` keeps its last checkpoint."""
    return Path(stage_dir) / CKPT_DIR / LAST_CKPT


def stage_dir_of(checkpoint: str | Path) -> Path | None:
    """The stage folder a ``.../ckpt/<name>.pt`` checkpoint belongs to, else None."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CKPT_DIR else None


class StageDir:
    """One stage's folder: its files and its completion check."""

    def __init__(self, root: Path, folder: str):
        self.root = Path(root)
        self.folder = folder
        self.stage, self.command = _PRODUCER.get(folder, (folder, f"nasdet {folder} CONFIG"))

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"StageDir({self.root})"

    @property
    def ckpt_dir(self) -> Path:
        return self.root / CKPT_DIR

    @property
    def checkpoint(self) -> Path:
        return checkpoint_in(self.root)

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def missing(self, what: str, hint: str = "") -> StageOrderError:
        """The error for a missing output of this stage: names the stage and command to run first."""
        return StageOrderError(f"{what}: run the {self.stage} stage first (`{self.command}`){hint}")

    def require(self, name: str, what: str, hint: str = "") -> Path:
        path = self.root / name
        if not path.is_file():
            raise self.missing(f"no {what}: {path} does not exist", hint)
        return path

    def require_checkpoint(self, what: str = "", hint: str = "") -> Path:
        """``ckpt/last.pt`` of this stage, or the one error every stage raises when it is missing."""
        path = self.checkpoint
        if not path.is_file():
            raise MissingCheckpoint(f"no {what or self.folder + ' checkpoint'} at {path}: run the {self.stage} "
                                    f"stage first (`{self.command}`){hint}")
        return path

    def read(self, name: str) -> Any:
        return json.loads((self.root / name).read_text())

    def completed(self, final_step: int) -> dict | None:
        """The saved record (metrics.json) of a training stage that reached ``final_step`` (or went past it: one
        trained with a larger ``max_steps`` before, which a rerun resumed and rewrote, training nothing), else None."""
        if self.metrics.is_file() and self.has_checkpoint():
            done = json.loads(self.metrics.read_text())
            if isinstance(done.get("step"), int) and done["step"] >= final_step:
                return done
        return None


class DiagnoseDir(StageDir):
    """``diagnose/``: the plan, one record per finished arch, the claims of the processes sharing the plan,
    each arch's stand-alone trainings, and the outputs."""

    @property
    def plan(self) -> Path:
        return self.root / "archs.json"

    @property
    def records(self) -> Path:
        return self.root / "records"

    def record(self, arch_id: str) -> Path:
        return self.records / f"{arch_id}.json"

    @property
    def claims(self) -> Path:
        return self.root / "claims"

    def training(self, arch_id: str, init: str, seed: int | None = None) -> Path:
        """Where the arch trains alone from ``init`` (scratch / supernet); ``seed``: the noise check's second run."""
        return self.root / "archs" / arch_id / (init if seed is None else f"{init}_seed{seed}")

    def repeat_record(self, arch_id: str, seed: int) -> Path:
        """The noise check's record: the arch's target trained again with ``seed`` (not in ``records/``)."""
        return self.root / "noise" / f"{arch_id}_seed{seed}.json"

    @property
    def results_csv(self) -> Path:
        return self.root / RESULTS_CSV

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def rank_png(self) -> Path:
        return self.root / "rank.png"


class WorkDir:
    """A run's work dir: one ``StageDir`` per stage plus the run-level files."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.baseline = StageDir(self.root / BASELINE, BASELINE)
        self.supernet = StageDir(self.root / SUPERNET, SUPERNET)
        self.search = StageDir(self.root / SEARCH, SEARCH)
        self.tune = StageDir(self.root / TUNE, TUNE)
        self.export = StageDir(self.root / EXPORT, EXPORT)
        self.diagnose = DiagnoseDir(self.root / DIAGNOSE, DIAGNOSE)
        self.eval = StageDir(self.root / EVAL, EVAL)
        self.classify = StageDir(self.root / CLASSIFY, CLASSIFY)

    @classmethod
    def of(cls, cfg, override: str | Path | None = None) -> "WorkDir":
        """The work dir of a run's config; refused (ConfigError) when it lies in, or holds, the config's data
        or another data set: every stage comes through here before it writes."""
        root = work_dir_of(cfg, override)
        folders = getattr(cfg, "data_folders", None)
        refuse_output_in_data(root, folders() if callable(folders) else (), "work dir")
        return cls(root)

    def stage(self, folder: str) -> StageDir:
        """The folder of a named stage (a benchmark may tune other archs into folders of its own)."""
        known = getattr(self, folder, None)
        return known if isinstance(known, StageDir) else StageDir(self.root / folder, folder)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def classified_backbone(self) -> Path:
        """``classify/backbone.pt``: the classification-trained backbone (``model.backbone.checkpoint``)."""
        return self.classify / BACKBONE_PT

    @property
    def controls_plan(self) -> Path:
        """The report's control archs (name, arch, costs), chosen once so that a rerun tunes the same ones."""
        return self.root / CONTROLS / "archs.json"

    def control(self, name: str) -> "StageDir":
        """Where control arch ``name`` is tuned (a tune folder of its own)."""
        return self.stage(f"{CONTROLS}/{name}")

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def pareto_png(self) -> Path:
        return self.root / PARETO_PNG

    # ------------------------------------------------------------------------------- search records
    @property
    def best_arch(self) -> Path:
        return self.search / BEST_ARCH

    def predicted_costs(self, arch: Mapping[str, Any] | None) -> dict | None:
        """The costs the search predicted for ``arch``, recorded in best_arch.json, if that is the arch."""
        if arch is None or not self.best_arch.is_file():
            return None
        try:
            rec = json.loads(self.best_arch.read_text())
        except json.JSONDecodeError:
            return None
        if not isinstance(rec, dict) or rec.get("arch") != dict(arch) or not isinstance(rec.get("costs"), dict):
            return None
        return {k: float(v) for k, v in rec["costs"].items() if k in ("macs", "params", "latency")}

    # ------------------------------------------------------------------------------- export records
    def onnx(self, source: str, raw: bool = False) -> Path:
        return self.export / f"{source}{'_raw' if raw else ''}.onnx"

    def onnx_int8(self, source: str) -> Path:
        return self.export / f"{source}_int8.onnx"

    def export_record(self, source: str, raw: bool = False) -> Path:
        return self.export / f"{source}{'_raw' if raw else ''}.json"

    def exported(self, source: str, int8: bool = False) -> dict | None:
        """The export record of ``source`` if it is newer than the checkpoint it exported (and, with
        ``int8``, holds the INT8 file's figures and that file is there). Whether it was made with the
        settings of a rerun is its ``settings`` (``stages.export.current_export``)."""
        path = self.export_record(source)
        if not path.is_file():
            return None
        rec = json.loads(path.read_text())
        ckpt = Path(rec.get("checkpoint", ""))
        if not ckpt.is_file() or ckpt.stat().st_mtime > path.stat().st_mtime or not Path(rec["onnx"]).is_file():
            return None
        if ckpt.resolve() != self.stage(source).checkpoint.resolve():  # a copied work dir's record: another run's
            return None
        if int8 and not (rec.get("int8") and Path(rec["int8"]["onnx"]).is_file()):
            return None
        return rec


class WriterLock:
    """One writer per stage folder: an exclusive ``fcntl.flock`` on ``<folder>/writer.lock``, held while the
    returned object is and released by the OS when the process dies (no stale lock to clean up after a
    kill). The file holds the holder's pid, for the message the next writer gets. Holding it again in the
    same process is not a second writer (one count per ``acquire``)."""

    _held: dict[Path, list] = {}  # folder -> [open file, count], this process's locks

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).absolute()
        self.path = self.folder / LOCK_FILE
        self.held = False

    def acquire(self) -> "WriterLock":
        import fcntl

        mine = self._held.get(self.folder)
        if mine is None:
            if self.folder.resolve() != Path(os.path.normpath(self.folder)):
                # reached through a link (a stage or ckpt folder linked to another disk): where it leads is checked
                # as the work dir was, or a wrong link target has checkpoints written among a data set's images
                refuse_output_in_data(self.folder, (), "stage folder", inside=True)
            self.folder.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                raise WorkDirBusy(f"{self.folder} is being written by another nasdet process (pid {holder}): wait "
                                  "for it to finish or stop it, or use another --work-dir") from None
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            mine = self._held[self.folder] = [f, 0]
        mine[1] += 1
        self.held = True
        return self

    def release(self) -> None:
        mine = self._held.get(self.folder)
        if not self.held or mine is None:
            return
        self.held = False
        mine[1] -= 1
        if mine[1] == 0:
            del self._held[self.folder]
            mine[0].close()  # closing the file releases the flock

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    @classmethod
    def _drop_in_child(cls) -> None:
        """A forked child (a DataLoader worker) closes its copies of the lock files: a flock belongs to the open
        file, which the child shares, so after a kill -9 of the writer its orphaned workers held the lock until
        they noticed (seconds), and an immediate rerun was refused, naming the dead pid. The parent's own
        descriptor keeps the lock while it lives; the child is no writer."""
        for f, _ in cls._held.values():
            try:
                f.close()
            except OSError:
                pass
        cls._held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WriterLock._drop_in_child)


def work_dir_of(cfg, override: str | Path | None = None) -> Path:
    """The work dir of a config (``cfg.work_dir``), or ``override`` when given."""
    return Path(override).expanduser() if override else Path(cfg.work_dir).expanduser()  # `--work-dir=~/x` too
