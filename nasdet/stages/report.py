"""The report stage: ``report.md`` + ``pareto.png`` in the work dir, the baseline and the found model
trained with the same recipe side by side (ENOT's fair comparison), the budget and the search summary."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import ExperimentConfig
from ..export import configured_postprocessing
from ..files import atomic_path, file_stamp, write_json_atomic, write_text_atomic
from ..models.heads.fad import format_genotype, read_genotypes
from ..search.controls import matched_cost_metric
from ..workdir import CONFIDENCE_JSON, INITIAL_METRICS, METRICS_FILE, PARETO_JSON, PARETO_PNG, WorkDir
from .common import baseline_config, start_note_of


def _row(name: str, record: dict, export: dict | None, cost: dict | None, input_size: int | None = None) -> dict:
    """``input_size``: the model's input resolution when neither its export nor its record's arch says it."""
    metrics = record["metrics"]
    size = (export or {}).get("input_size") or (record.get("arch") or {}).get("input_size") or input_size
    row = {"model": name, "AP": metrics.get("AP"), "AP50": metrics.get("AP50"), "split": _split_of(record),
           "input_size": size, "steps": record.get("step"), "init": record.get("init"),
           "imported": bool(record.get("imported_from")),
           "postprocessing": record.get("postprocessing")}
    if export is not None:
        row.update(macs=export["measured"]["macs"], params=export["measured"]["params"],
                   latency_torch_ms=export["latency_torch"]["median_ms"],
                   latency_onnxruntime_ms=export["latency_onnxruntime"]["median_ms"])
        int8 = export.get("int8")
        if int8:  # both through onnxruntime on val: the INT8 file's AP and the drop from the float file's
            row.update(ap_int8=int8["metrics_onnxruntime"]["int8"]["AP"], ap_drop_int8=int8["drop"]["AP"],
                       latency_onnxruntime_int8_ms=int8["latency_onnxruntime"]["int8"]["median_ms"])
            if int8.get("val_images") is not None and int8["val_images"] != record.get("val_images"):
                # scored on other images than the row's AP (export's eval.max_images): the drop is not AP - INT8 AP
                row["int8_images"] = int8["val_images"]
    elif cost is not None:
        row.update(macs=cost["macs"]["total"], params=cost["params"]["total"])
    return row


# why a pipeline after a torchrun tune tunes no control (the console and report.md say it)
CONTROLS_UNDER_TORCHRUN = ("the found arch was tuned by {n} processes (torchrun), and `nasdet pipeline` tunes the "
                           "controls in one, which would not compare with it (another batch schedule); to have them, "
                           "tune the found arch in one process too (delete tune/ and rerun the pipeline), or set "
                           "report.controls: false")

# what a control's tune record must share with the found arch's for the two to differ only by the arch
LIKE_KEYS = ("init", "supernet", "recipe", "step", "val", "val_images", "recalib_batches", "seed", "augment",
             "postprocessing", "processes")


def unlike(found: dict, other: dict) -> list[str]:
    """How a control's tune record differs from the found arch's (``LIKE_KEYS``), e.g. ``step 3 vs 12`` or
    ``recipe (lr, max_steps)``; empty when they were tuned alike. Records without a key do not count it."""
    out = []
    for k in LIKE_KEYS:
        if k not in other or k not in found:
            continue
        a, b, name = other[k], found[k], k
        if k == "supernet" and other.get("supernet_sha256") and found.get("supernet_sha256"):
            # the same file however it was named; a supernet retrained at the same path is another
            a, b, name = other["supernet_sha256"][:12], found["supernet_sha256"][:12], "supernet sha256"
        elif k in ("supernet", "val") and isinstance(a, str) and isinstance(b, str):  # the files named
            a, b = os.path.realpath(a), os.path.realpath(b)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.append(f"{name} ({', '.join(sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n)))})")
        else:
            out.append(f"{name} {a} vs {b}")
    return out


def per_class_lines(baseline: dict, found: dict) -> list[str]:
    """report.md's per-class AP of the found arch beside the baseline's, when both records hold it (records
    written before nasdet kept it do not) for the same classes on the same val images; else nothing."""
    a, b = (baseline.get("metrics") or {}).get("per_class"), (found.get("metrics") or {}).get("per_class")
    if not a or not b or list(a) != list(b) or _split_of(baseline) != _split_of(found) \
            or not baseline.get("val") or not found.get("val") \
            or os.path.realpath(baseline["val"]) != os.path.realpath(found["val"]) \
            or any(a[n]["gt_boxes"] != b[n]["gt_boxes"] for n in a):
        return []

    def f(v):
        return "-" if v is None else f"{v:.4f}"

    lines = [f"Per-class AP on {_split_of(found)} (a class without val boxes has no AP and is not in the mean):", "",
             "| class | val boxes | AP baseline | AP found | AP found - baseline | AP50 baseline | AP50 found |",
             "|---|---|---|---|---|---|---|"]
    for n in a:
        x, y = a[n], b[n]
        diff = "-" if x["AP"] is None or y["AP"] is None else signed(y["AP"] - x["AP"])
        name = n.replace("|", "\\|")  # a markdown cell
        lines.append(f"| {name} | {x['gt_boxes']} | {f(x['AP'])} | {f(y['AP'])} | {diff} | {f(x['AP50'])} "
                     f"| {f(y['AP50'])} |")
    return lines + [""]


def stale_report_note(w: WorkDir) -> str | None:
    """A line saying report.md is older than a record it is made from (a stage's own command redid it: `nasdet
    export --int8`, `nasdet eval`, a retune), else None: only `nasdet pipeline` writes the report."""
    if not w.report_md.is_file():
        return None
    sources = [w.baseline.metrics, w.supernet.metrics, w.tune.metrics, w.search / PARETO_JSON, w.search / CONFIDENCE_JSON,
               *w.root.glob("export/*.json"), *w.root.glob("controls/*/metrics.json")]
    made = w.report_md.stat().st_mtime_ns
    newer = sorted(str(p.relative_to(w.root)) for p in sources if p.is_file() and p.stat().st_mtime_ns > made)
    if not newer:
        return None
    return (f"{w.report_md} is older than {', '.join(newer[:3])}{' ...' if len(newer) > 3 else ''}: rerun "
            "`nasdet pipeline CONFIG` (it redoes nothing done) to bring the report up to date")


def kept_result(path: Path, key: dict) -> dict | None:
    """The ``result`` a report computation kept in ``path`` for the same ``key`` (its inputs), else None."""
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return kept["result"] if isinstance(kept, dict) and kept.get("key") == key else None


class ReportModels:
    """The val set and the models of the checkpoints the report computes with (the bootstrap's detections, the
    paired timing), each read once and only when a kept result does not answer."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg, self._val, self._models = cfg, None, {}

    @property
    def val(self):
        if self._val is None:
            from ..data.build import build_datasets

            self._val = build_datasets(self.cfg, need=("val",))["val"]
        return self._val

    def model(self, ckpt: Path, tuned: bool):
        """The detector of a tuned (``tuned``) or trained checkpoint."""
        from ..train.trained import load_trained_model, load_tuned_model

        if ckpt not in self._models:
            val, cfg = self.val, self.cfg
            self._models[ckpt] = load_tuned_model(ckpt, cfg, val.num_classes, classes=val.classes)[0] if tuned else \
                load_trained_model(cfg, ckpt, val.num_classes, classes=val.classes)
        return self._models[ckpt]


BOOTSTRAP_FILE = "report_bootstrap.json"  # in the work dir: the last bootstrap and what it was computed from


def ap_differences(cfg: ExperimentConfig, w: WorkDir, rows: list[dict], console: Console,
                   loaded: ReportModels | None = None) -> dict | None:
    """How sure the report's AP differences are: a paired bootstrap over the val images (``metrics/bootstrap.py``)
    of found - baseline, found - random archs (their mean), found - the baseline's arch and the baseline's arch -
    the baseline, each model's detections computed again from its checkpoint on the images its record scored.
    Only rows scored on the current val images take part. Kept in ``report_bootstrap.json`` while the
    checkpoints, images, post-processing and resamples stay the same. None when ``report.bootstrap`` is 0."""
    import numpy as np

    from ..data.dataset import to_coco_gt
    from ..metrics.bootstrap import ImageMatches, bootstrap_samples, difference_interval, resampled_metric
    from ..train.evaluate import predict
    from ..train.loop import resolve_device

    resamples = cfg.report.bootstrap
    if not resamples:
        return None
    loaded = loaded or ReportModels(cfg)
    val = loaded.val
    scored = val.first(cfg.eval.max_images)
    models: dict[str, tuple[Path, bool]] = {}  # name -> (checkpoint, tuned)
    row_ap: dict[str, float] = {}
    found = next(r for r in rows if r["model"].startswith("found arch"))
    for r in rows:
        if r.get("split") != found.get("split") or r.get("unlike"):
            continue  # not on the found arch's val images, or tuned otherwise: no comparison is stated
        if r is found:
            models["found"] = (w.tune.checkpoint, True)
        elif r.get("control"):
            models[r["control"]] = (w.control(r["control"]).checkpoint, True)
        elif r["model"].startswith("baseline (") and w.baseline.has_checkpoint():
            models["baseline"] = (w.baseline.checkpoint, False)
        else:
            continue
        row_ap[next(reversed(models))] = r["AP"]
    if f"val ({len(scored)} images)" != found.get("split") or len(models) < 2 \
            or not all(ckpt.is_file() for ckpt, _ in models.values()):
        return None
    key = {"models": {n: file_stamp(c) for n, (c, _) in models.items()},
           "val": val.source, "images": len(scored), "postprocessing": configured_postprocessing(cfg.model),
           "resamples": resamples, "seed": cfg.seed}
    kept = w.root / BOOTSTRAP_FILE
    if (result := kept_result(kept, key)) is not None:
        return result
    device = resolve_device(cfg.train.device)
    gt = to_coco_gt(scored)
    matches = {}
    for name, (ckpt, tuned) in models.items():
        console.print(f"report: detections of {name} on {len(scored)} val images for the bootstrap")
        matches[name] = ImageMatches(gt, predict(loaded.model(ckpt, tuned).to(device), scored, device,
                                                 cfg.eval.batch_size, cfg.data.num_workers))
    point, values, defined = resampled_metric(matches, bootstrap_samples(len(scored), resamples, cfg.seed), "AP")
    # a model whose detections give another AP than its row (a record evaluated otherwise, that no stage evaluated
    # again) takes no part: the paragraph would contradict the table
    apart = sorted(n for n in models if row_ap.get(n) is not None and abs(point[n] - row_ap[n]) > 5e-4)
    models = {n: v for n, v in models.items() if n not in apart}
    randoms = [n for n in models if n.startswith("random_")]
    pairs = {}
    if "baseline" in models:
        pairs["found - baseline"] = ("found", ["baseline"])
    if randoms:
        pairs["found - random arch" + ("s' mean" if len(randoms) > 1 else "")] = ("found", randoms)
    if "baseline_arch" in models:
        pairs["found - baseline's arch"] = ("found", ["baseline_arch"])
        if "baseline" in models:
            pairs["baseline's arch - baseline"] = ("baseline_arch", ["baseline"])
    differences = {}
    for label, (a, bs) in pairs.items():
        diff = point[a] - sum(point[b] for b in bs) / len(bs)
        per_resample = values[a] - np.mean([values[b] for b in bs], axis=0)
        differences[label] = difference_interval(float(diff), per_resample, 0.9)
    result = {"images": len(scored), "resamples": int(defined.sum()), "level": 0.9, "ap": point,
              "differences": differences, "left_out": apart}
    write_json_atomic(kept, {"key": key, "result": result})
    return result


LATENCY_FILE = "report_latency.json"  # in the work dir: the paired timing and what it timed


def paired_latency(cfg: ExperimentConfig, w: WorkDir, exports: dict, console: Console,
                   loaded: ReportModels | None = None) -> dict | None:
    """The baseline's and the found model's CPU latencies timed in turns, run by run alternating (torch, and their
    ONNX files in onnxruntime), each on an image at its own input size as their exports time them: the exports
    time each model alone, minutes or hours apart, and the ratio followed the machine's load (found / baseline
    x0.73 to x1.05 for the same two files). Kept in ``report_latency.json`` while the files and ``cost`` are the
    same. None without both exports."""
    from ..export import timed_on_image, timing_image, timing_inputs
    from ..models import get_input_size
    from ..models.cost import measure_latencies_in_turns, onnx_session, time_sessions
    from ..models.families import family_named
    from ..search.latency import latency_images

    if not exports.get("baseline") or not exports.get("tune"):
        return None
    files = {"baseline": (w.baseline.checkpoint, w.onnx("baseline")), "tune": (w.tune.checkpoint, w.onnx("tune"))}
    if not all(p.is_file() for pair in files.values() for p in pair):
        return None
    # an INT8 file its export record keeps is timed in the same turns: one row's float and INT8 cells, one session
    int8 = {n: w.onnx_int8(n) for n in files if (exports[n] or {}).get("int8") and w.onnx_int8(n).is_file()}
    files = {n: (*pair, *([int8[n]] if n in int8 else [])) for n, pair in files.items()}
    c = cfg.cost
    key = {"files": {n: [file_stamp(p) for p in pair] for n, pair in files.items()},
           "cost": c.model_dump(mode="json")}
    follows = family_named(cfg.model.detector).work_follows_the_image
    if follows:  # timed on the val image its export is timed on (before: noise, on which Faster R-CNN did less)
        key["timing_image"] = {"val": cfg.data.val.model_dump(mode="json"), "check_images": cfg.export.check_images}
    kept = w.root / LATENCY_FILE
    if (result := kept_result(kept, key)) is not None:
        return result
    console.print("report: timing the baseline and the found model in turns")
    loaded = loaded or ReportModels(cfg)
    models = [loaded.model(files["baseline"][0], False), loaded.model(files["tune"][0], True)]
    sizes = [get_input_size(m) for m in models]
    real = latency_images(cfg, loaded.val) if follows else None
    examples = [timing_inputs(m, real)[0] for m in models]
    torch_times = measure_latencies_in_turns(models, c.device, c.warmup, c.runs, c.threads,
                                             [timed_on_image(m, e) for m, e in zip(models, examples)])
    # as the export times its file: one image already at the input size
    probes = [{"image": timing_image(m, e).numpy()} for m, e in zip(models, examples)]
    names = ("baseline", "tune")
    onnx_files = [(n, p) for n in names for p in files[n][1:]]
    ort_times = time_sessions([onnx_session(p, c.threads) for _, p in onnx_files],
                              [probes[names.index(n)] for n, _ in onnx_files], c.warmup, c.runs)
    result = {n: {"torch": t, "input_size": s} for n, t, s in zip(names, torch_times, sizes)}
    for (n, p), timing in zip(onnx_files, ort_times):
        result[n]["onnxruntime_int8" if p.name.endswith("_int8.onnx") else "onnxruntime"] = timing
    write_json_atomic(kept, {"key": key, "result": result})
    return result


def latency_lines(result: dict | None, cfg: ExperimentConfig) -> list[str]:
    if not result:
        return []
    b, f = result["baseline"], result["tune"]
    c = cfg.cost

    def ratio(kind: str) -> str:
        return f"x{f[kind]['median_ms'] / b[kind]['median_ms']:.2f}"
    return [f"CPU latencies of the baseline and the found model (the table's) are timed in turns, run by run "
            f"alternating, {c.runs} runs each after {c.warmup} warmup, {c.threads or 'all'} thread(s), each on one image "
            f"at its input size: found / baseline {ratio('torch')} in torch (p90 found {f['torch']['p90_ms']:.2f}, "
            f"baseline {b['torch']['p90_ms']:.2f} ms), {ratio('onnxruntime')} in onnxruntime (p90 found "
            f"{f['onnxruntime']['p90_ms']:.2f}, baseline {b['onnxruntime']['p90_ms']:.2f} ms)"
            + (", their INT8 files in the same turns" if any("onnxruntime_int8" in r for r in (b, f)) else "") + ".", ""]


def search_lines(strategy: str, pareto_record: dict, confidence: dict | None, score_on: str, plot: bool) -> list[str]:
    """report.md's search paragraph: the plot, the split and its images, the candidates, the confidence verdict.
    The baseline point is mentioned only when the plot has one; a kept study scored with other settings says
    which (a complete study rerun with another model.score_thresh lost its image count and verdict, and the
    report described a baseline point the plot no longer had)."""
    split = "the validation set" if score_on == "val" else "the search split"
    images = confidence["images"] if confidence else pareto_record.get("images")
    split += f" ({images} images)" if images else ""
    lines = []
    if plot:
        lines += [f"![candidates scored on {split}]({PARETO_PNG})", ""]
        if score_on == "search" and pareto_record.get("baseline"):
            lines += ["(The plot's baseline point is scored on the search split too, which it trained on: optimistic, "
                      "not comparable with the candidates'.)", ""]
    if pareto_record:
        scored_with = pareto_record.get("scored_with")
        lines += [f"Search ({strategy}): {pareto_record['scored']} candidates scored on {split}, "
                  f"{len(pareto_record['front'])} on the Pareto front"
                  + (f"; its study was scored with other settings than this config's and its candidates are kept as "
                     f"scored ({', '.join(f'{k} {v}' for k, v in scored_with.items())}): the search's APs are taken "
                     "after those" + (", its baseline point and confidence too" if pareto_record.get("baseline")
                                      or confidence else "") if scored_with else "") + ".", ""]
    if confidence:
        lines += [confidence["verdict"], ""]
    return lines


def bootstrap_lines(result: dict | None) -> list[str]:
    """report.md's paragraph of the bootstrap: each difference with its interval, those not told apart said."""
    if not result:
        return []
    apart = (f" Left out: {', '.join(result['left_out'])}, whose detections now give another AP than the table's "
             "(a record evaluated otherwise: rerun `nasdet pipeline`)." if result.get("left_out") else "")
    if not result["differences"]:
        return [apart.strip(), ""] if apart else []
    parts = []
    for label, d in result["differences"].items():
        verdict = "" if d["distinguishable"] is not False else ": not told apart"
        parts.append(f"{label} {signed(d['point'])} [{signed(d['low'])}, {signed(d['high'])}]{verdict}")
    return [f"How sure these AP differences are (paired bootstrap over the {result['images']} val images, "
            f"{result['resamples']} resamples, {result['level']:.0%} intervals; a new seed's training noise is not in "
            "them, `benchmarks/controls_seeds.py` measures it): " + "; ".join(parts) + ". A difference whose "
            "interval holds 0 is not told apart on these images." + apart, ""]


def postprocessing_lines(cfg: ExperimentConfig, rows: list[dict]) -> list[str]:
    """Which post-processing every AP (and the exported graphs) is taken after; rows whose record was evaluated
    after other values (kept from before a change of model.score_thresh that no stage re-evaluated) are named."""
    now = configured_postprocessing(cfg.model)
    shown = ", ".join(f"{k} {v}" for k, v in now.items())
    other = [r["model"] for r in rows if r.get("postprocessing") is not None and r["postprocessing"] != now]
    line = f"Post-processing of every AP and exported graph: {shown} (model.*)."
    if other:
        line += (f" Evaluated after other values: {', '.join(other)} (their APs are not comparable with the others'; "
                 "rerun `nasdet pipeline` to evaluate them again).")
    return [line, ""]


def how_tuned(record: dict) -> str:
    return "supernet + tune" if record.get("init") == "supernet" else "tune from scratch"


def _control_rows(w: WorkDir, found: dict) -> list[dict]:
    """One row per control arch tuned so far (``controls/<name>/metrics.json``), its costs from the plan, labelled
    by how it was tuned, with ``unlike``: how its tuning differs from the found arch's (``found``'s record), and
    ``recipe_vs_baseline``: the recipe keys it was tuned with otherwise than the baseline trained (``tune.train``)."""
    if not w.controls_plan.is_file():
        return []
    base_recipe = _baseline_recipe(w)
    rows = []
    for c in json.loads(w.controls_plan.read_text())["controls"]:
        record = w.control(c["name"]) / METRICS_FILE
        if not record.is_file():
            continue
        rec = json.loads(record.read_text())
        label = "baseline arch" if c["name"] == "baseline_arch" else f"random arch {c['name'].split('_')[-1]}"
        costs = {"macs": {"total": c["costs"]["macs"]}, "params": {"total": c["costs"]["params"]}}
        row = {**_row(f"{label} ({how_tuned(rec)})", rec, None, costs), "control": c["name"], "unlike": unlike(found, rec),
               "gap": c.get("gap")}
        if base_recipe is not None and isinstance(rec.get("recipe"), dict):
            row["recipe_vs_baseline"] = sorted(k for k in set(base_recipe) | set(rec["recipe"])
                                               if k not in NOT_RECIPE and base_recipe.get(k) != rec["recipe"].get(k))
        rows.append(row)
    return rows


def _starting_weights(cfg: ExperimentConfig, base_record: dict, supernet_record: dict | None = None) -> str:
    """Where the run's weights started: the baseline (trained here, from what; or imported) and the supernet (the
    start ``nasdet pretrain`` recorded in supernet/metrics.json, which follows pipeline.classify and
    supernet.init_from; else as the config reads)."""
    origin = base_record.get("imported_from")
    if origin:
        baseline = (f"the baseline imported from {origin.get('path')} ({origin.get('format', 'a')} checkpoint"
                    + (f", fine-tuned {base_record.get('step')} steps for this data's classes)" if base_record.get("step")
                       else ")"))
    elif base_record:
        baseline = f"the baseline trained here ({start_note_of(baseline_config(cfg))})"
    else:
        baseline = None
    recorded = (supernet_record or {}).get("start")
    if cfg.search.strategy == "darts":  # FAD searches the head on the detector itself: no supernet
        supernet = None
    elif cfg.pipeline.init_supernet_from_baseline and cfg.pipeline.baseline:
        supernet = "the supernet from the baseline's weights (pipeline.init_supernet_from_baseline)"
    else:
        supernet = f"the supernet ({recorded or start_note_of(cfg)})"
    return "Starting weights: " + "; ".join(filter(None, (baseline, supernet))) + "."


def supernet_started_from_baseline(cfg: ExperimentConfig, supernet_record: dict | None) -> bool:
    """Whether the supernet's training started from the baseline's weights (its record's ``start``, else the config)."""
    start = (supernet_record or {}).get("start")
    if isinstance(start, str):
        return start.startswith("from the baseline's weights")
    return bool(cfg.pipeline.init_supernet_from_baseline and cfg.pipeline.baseline)


def _cost_match(randoms: list[dict], tolerance: float, metric: str, latency: bool = False) -> str:
    """How the random controls' cost (``metric``) compares with the found arch's: "of the same cost" only when
    every one is within ``tolerance``; else the widest gap, said (a found arch at the space's cost edge has no
    neighbour there)."""
    gaps = [r["gap"] for r in randoms if r.get("gap") is not None]
    if not gaps or max(abs(g) for g in gaps) <= tolerance:
        return "of the same MACs (a latency budget is matched through MACs: draws are not timed)" if latency \
            else "of the same cost"
    widest = max(gaps, key=abs)
    return (f"whose {_COST_NAMES[metric]} differ from the found arch's by up to {widest:+.0%} (no draw came within "
            f"report.controls_tolerance {tolerance:.0%}): not of the same cost")


_COST_NAMES = {"macs": "MACs", "params": "params"}


def _training_budgets(baseline: dict, own: dict, supernet_steps: int | None, from_baseline: bool) -> str:
    """How long each side of the training comparison trained: the baseline's arch from the supernet had the
    supernet's steps too, and with pipeline.init_supernet_from_baseline the baseline's own before them."""
    if baseline.get("steps") is None or own.get("steps") is None:
        return ""
    supernet = f"{supernet_steps} supernet steps" if supernet_steps is not None else "the supernet's steps"
    if from_baseline:
        return (f" It trained longer: the baseline {baseline['steps']} steps; the other the baseline's "
                f"{baseline['steps']}, then {supernet} (the supernet started from the baseline's weights), then "
                f"{own['steps']} tune steps: the difference is more training as much as the supernet's.")
    return f" Steps: the baseline {baseline['steps']}; the other {supernet}, then {own['steps']} tune steps."


def _controls_text(baseline: dict | None, found: dict, controls: list[dict], tolerance: float = 0.03,
                   imported: bool = False, metric: str = "macs", latency: bool = False,
                   supernet_steps: int | None = None, from_baseline: bool = False) -> str:
    """Which differences are architecture (found vs the controls, all trained alike) and which are training
    (the baseline's arch trained alone vs taken from the supernet and tuned). A control tuned unlike the found
    arch (``unlike``) is left out of both, and named."""
    apart = [r for r in controls if r.get("unlike")]
    controls = [r for r in controls if not r.get("unlike")]
    left_out = ""
    if apart:
        torchrun = any(u.startswith("processes ") for r in apart for u in r["unlike"])
        # "step <control's> vs <found arch's>": which side trained under a max_steps since changed says the fix
        steps = {r["control"]: (int(m.group(1)), int(m.group(2))) for r in apart for u in r["unlike"]
                 if (m := re.fullmatch(r"step (\d+) vs (\d+)", u))}
        shorter = sorted(n for n, (mine, theirs) in steps.items() if mine < theirs)
        left_out = (" Left out of these comparisons, tuned unlike the found arch: " + "; ".join(
            f"{r['control']} ({', '.join(r['unlike'])})" for r in apart) + (
            " (the found arch was tuned under torchrun, and `nasdet pipeline` tunes the controls in one process: "
            "tune the found arch in one process too, then delete controls/ and rerun the pipeline)" if torchrun else
            f" ({', '.join(shorter)} trained fewer steps than the found arch ({steps[shorter[0]][1]}), under a "
            f"max_steps since changed: delete {', '.join('controls/' + n for n in shorter)} and rerun the pipeline "
            "with the recipe the found arch was tuned with)" if shorter else
            " (the found arch trained fewer steps, under a max_steps since changed: delete tune/ and controls/ and "
            "rerun the pipeline to tune them all alike)" if steps else
            " (delete controls/ and rerun the pipeline to tune them alike)") + ".")
    arch, training = [], ""
    randoms = [r for r in controls if r["control"] != "baseline_arch"]
    if randoms:
        aps = [r["AP"] for r in randoms]
        mean = sum(aps) / len(aps)
        spread = f" (their AP spans {min(aps):.4f}-{max(aps):.4f} over {len(aps)} random archs)" if len(aps) > 1 else ""
        arch.append(f"AP {signed(found['AP'] - mean)} over a random arch {_cost_match(randoms, tolerance, metric, latency)}{spread}")
    own = next((r for r in controls if r["control"] == "baseline_arch"), None)
    if own is not None:
        arch.append(f"AP {signed(found['AP'] - own['AP'])} over the baseline's own arch")
        if imported and baseline is not None:
            training = (" Training: the baseline was imported (pipeline.baseline_checkpoint), trained elsewhere with a "
                        "recipe this run does not know, so the baseline's arch taken from the supernet and tuned "
                        f"(AP {signed(own['AP'] - baseline['AP'])} over it) is not a measure of the supernet's training.")
        elif baseline is not None and baseline["split"] == own["split"] and own.get("init", "supernet") != "supernet":
            # tune.init scratch: nothing came from the supernet; the two differ by the backbone's init and the seed
            training = (f" Training: the baseline's arch trained from scratch with tune's init (tune.init: scratch) has "
                        f"AP {signed(own['AP'] - baseline['AP'])} over the same arch trained as the baseline: no "
                        "supernet in either, so this is the initialization and run-to-run noise.")
        elif baseline is not None and baseline["split"] == own["split"]:
            recipe = (f" (tuned with another recipe than the baseline's: {', '.join(own['recipe_vs_baseline'])})"
                      if own.get("recipe_vs_baseline") else "")
            training = (f" Training: the baseline's arch taken from the supernet and tuned has AP "
                        f"{signed(own['AP'] - baseline['AP'])} over the same arch trained alone (the baseline){recipe}."
                        + _training_budgets(baseline, own, supernet_steps, from_baseline))
    text = ("Architecture, all trained exactly alike: the found arch has " + " and ".join(arch) + ".") if arch else ""
    return ((text + training).strip() + (f" All on {found['split']}." if arch or training else "") + left_out).strip()


def diagnose_lines(summary: dict, k_key: str = "pipeline.diagnose") -> list[str]:
    """report.md's section of a diagnose summary: what was ranked against what (splits and image counts),
    the tau table with its intervals, and whether the target is noise (then every tau cell is marked)."""
    from ..search.diagnose import few_archs_note, fmt_stat as f, is_noise

    recipe, splits = summary["recipe"], summary["splits"]
    init = "from the supernet's weights" if summary["target"].startswith("standalone_supernet") else "from scratch"
    epochs = f"{recipe['epochs']} epoch{'s' if recipe['epochs'] != 1 else ''}"
    steps = f" ({recipe['steps']} steps)" if recipe.get("steps") is not None else ""
    scored_on = "the validation set" if splits["supernet"]["split"] == "val" else "the search split"
    lo, hi = summary["macs_range"]
    noise = is_noise(summary)
    lines = ["## Does the supernet rank truthfully here?", "",
             f"`nasdet diagnose` ({k_key}: {summary['archs']}): {summary['archs']} archs from {lo / 1e6:.1f} to "
             f"{hi / 1e6:.1f} M MACs, each scored as the search scores them ({summary['metric']} on {scored_on}, "
             f"{splits['supernet']['images']} images) and trained alone for {epochs}{steps} {init}, then evaluated "
             f"on val ({splits['target']['images']} images): the target. Kendall tau and Spearman rho of each ranker "
             "against it, with bootstrap 90 % intervals over the archs; a supernet tau whose interval holds MACs' tau "
             f"ranks no better than size. {summary['trainings']} stand-alone trainings (`diagnose/`).", ""]
    if summary.get("noise"):
        verdict = summary["noise"]["verdict"]
        lines += [f"**{verdict}**" if noise else verdict, ""]
    if summary.get("warning"):
        lines += [f"Warning: {summary['warning']}.", ""]
    few = few_archs_note(summary["archs"], k_key)
    if few:
        lines += [few[0].upper() + few[1:] + ".", ""]
    mark = " (noise)" if noise else ""
    top_k = next(iter(summary["rankers"].values()))["top_k"]
    lines += ["| ranker | Kendall tau [90 %]" + (": target is noise" if noise else "") +
              f" | Spearman rho [90 %] | top-{top_k} overlap |", "|---|---|---|---|"]
    for name, a in {**summary["rankers"], **summary.get("other_standalone", {})}.items():
        lines.append(f"| {name} | {f(a['kendall_tau'])} [{f(a['kendall_tau_lo'])}, {f(a['kendall_tau_hi'])}]{mark} "
                     f"| {f(a['spearman_rho'])} [{f(a['spearman_rho_lo'])}, {f(a['spearman_rho_hi'])}] "
                     f"| {f(a['top_k_overlap'])} |")
    return lines + [""]


NOT_RECIPE = {"device", "threads", "log_every_steps", "ckpt_every_steps", "channels_last"}  # not how it learns


def _baseline_recipe(w: WorkDir) -> dict | None:
    """The train recipe the baseline's checkpoint records, if any."""
    from ..train.checkpoint import load_checkpoint

    if not w.baseline.has_checkpoint():
        return None
    recipe = ((load_checkpoint(w.baseline.checkpoint).get("config") or {}).get("train"))
    return recipe if isinstance(recipe, dict) else None


def signed(x: float) -> str:
    """``+0.0123``; a difference that rounds to zero is ``+0.0000``, never ``-0.0000``."""
    text = f"{x:+.4f}"
    return "+0.0000" if text == "-0.0000" else text


def _split_of(record: dict) -> str:
    """"val (300 images)": where a metrics record was evaluated."""
    n = record.get("val_images")
    return "val" + (f" ({n} images)" if n is not None else "")


def _fmt(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if key == "split":
        return v
    if key == "input_size":
        return f"{v} px"
    if key == "steps":  # a tune from the supernet's weights had the supernet's training before its own steps
        if row.get("imported"):  # trained elsewhere; steps here only if fine-tuned for this data's classes
            return f"imported + {v}" if v else "imported"
        return f"supernet + {v}" if row.get("init") == "supernet" else str(v)
    on = f" (on {row['int8_images']} images)" if key in ("ap_int8", "ap_drop_int8") and row.get("int8_images") else ""
    if key in ("AP", "AP50", "ap_int8"):
        return f"{v:.4f}{on}"
    if key == "ap_drop_int8":
        return signed(-v) + on
    if key == "macs":
        return f"{v / 1e6:.1f} M"
    if key == "params":
        return f"{v / 1e6:.3f} M"
    return f"{v:.2f} ms"


COLUMNS = (("split", "evaluated on"), ("input_size", "input"), ("steps", "training steps"), ("AP", "AP"), ("AP50", "AP50"), ("macs", "MACs"), ("params", "params"),
           ("latency_torch_ms", "CPU latency torch"), ("latency_onnxruntime_ms", "CPU latency onnxruntime"))
INT8_COLUMNS = (("ap_int8", "AP INT8 (onnxruntime)"), ("ap_drop_int8", "AP INT8 - float"),
                ("latency_onnxruntime_int8_ms", "CPU latency onnxruntime INT8"))


def write_report(cfg: ExperimentConfig, wd: Path, exports: dict, console: Console, costs: dict | None = None) -> dict:
    """``report.md`` + ``pareto.png``: baseline vs found model, the budget, the search summary. ``costs``:
    ``nasdet cost`` records standing in for exports that were not made (``{"baseline": ...}``)."""
    w = WorkDir(wd)
    rows = []
    base_metrics = w.baseline.metrics
    base_record = json.loads(base_metrics.read_text()) if base_metrics.is_file() else {}
    supernet_record = json.loads(w.supernet.metrics.read_text()) if w.supernet.metrics.is_file() else None
    if base_metrics.is_file():
        name = f"baseline ({baseline_config(cfg).model.backbone.name}{', imported' if base_record.get('imported_from') else ''})"
        base_cost = None if exports.get("baseline") else (costs or {}).get("baseline")
        rows.append(_row(name, base_record, exports.get("baseline"), base_cost, baseline_config(cfg).model.input_size))
    tune = json.loads(w.tune.require(METRICS_FILE, "metrics of the tuned model").read_text())
    predicted = None if exports.get("tune") or tune.get("genotype") else w.predicted_costs(tune.get("arch"))
    found_cost = {k: {"total": predicted[k]} for k in ("macs", "params")} \
        if predicted and "macs" in predicted and "params" in predicted else None
    rows.append(_row(f"found arch ({how_tuned(tune)})", tune, exports.get("tune"), found_cost, cfg.model.input_size))
    # report.controls off: an earlier run's controls/ are not this run's comparison (they were reported without a word)
    controls = _control_rows(w, tune) if cfg.report.controls else []
    rows += controls
    initial = w.tune / INITIAL_METRICS
    init_record = json.loads(initial.read_text()) if initial.is_file() else None
    init_metrics = init_record["metrics"] if init_record else None

    loaded = ReportModels(cfg)  # the models the paired timing and the bootstrap read, each once
    latency = paired_latency(cfg, w, exports, console, loaded)
    if latency and base_metrics.is_file():  # the compared pair timed alike (each export timed its model alone)
        for r, n in ((rows[0], "baseline"), (next(r for r in rows if r["model"].startswith("found arch")), "tune")):
            r.update(latency_torch_ms=latency[n]["torch"]["median_ms"],
                     latency_onnxruntime_ms=latency[n]["onnxruntime"]["median_ms"])
            if "onnxruntime_int8" in latency[n]:
                r["latency_onnxruntime_int8_ms"] = latency[n]["onnxruntime_int8"]["median_ms"]
    columns = COLUMNS + (INT8_COLUMNS if any("ap_int8" in r for r in rows) else ())
    splits = {r["split"] for r in rows}
    shown = rows[0]["split"] if len(splits) == 1 else "evaluated on different val images: see the column"
    table = Table(title=f"{cfg.name}: baseline vs found model ({shown})")
    table.add_column("model")
    for _, title in columns:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(r["model"], *[_fmt(r, k) for k, _ in columns])
    console.print(table)

    budget = cfg.search.budget
    train = cfg.data.train
    data = train.annotations or train.root or train.images or cfg.data.data_yaml
    darts = cfg.search.strategy == "darts"
    if darts:  # FAD: the head's towers are searched, the backbone is fixed
        h = cfg.model.head
        space = (f"search space FAD's {cfg.model.detector} head (box and cls towers of {h.search_cells} cell(s) of "
                 f"{h.search_nodes} nodes, C = {h.cell_channels}; {h.num_cells} cell(s) trained) on a fixed "
                 f"{cfg.model.backbone.name} (width {cfg.model.backbone.width_mult})")
    else:
        space = f"search space {cfg.model.backbone.name} (width {cfg.model.backbone.width_mult})"
    lines = [f"# nasdet report: {cfg.name}", "", f"Detector {cfg.model.detector}, {space}, data {data}.", "",
             _starting_weights(cfg, base_record, supernet_record), ""]
    if budget is not None:
        scale, unit = (1e6, "M") if budget.metric in ("macs", "params") else (1.0, "ms")
        lines += [f"Budget: {budget.metric} <= {budget.max / scale:.4g} {unit}.", ""]
    lines += ["| model | " + " | ".join(t for _, t in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + r["model"] + " | " + " | ".join(_fmt(r, k) for k, _ in columns) + " |" for r in rows]
    lines.append("")
    lines += postprocessing_lines(cfg, rows)
    lines += latency_lines(latency, cfg)
    found_row = next(r for r in rows if r["model"].startswith("found arch"))
    if base_metrics.is_file() and rows[0].get("macs") and found_row.get("macs"):
        b, f = rows[0], found_row
        same = f["split"] == b["split"]
        ap = (f"AP50 {signed(f['AP50'] - b['AP50'])}, AP {signed(f['AP'] - b['AP'])} on {f['split']}" if same else
              f"their APs are not compared: the found model was evaluated on {f['split']}, the baseline on "
              f"{b['split']}")
        why = ("The found model was tuned from the supernet's weights, so it also had the supernet's training: the "
               "difference mixes architecture and training." if tune.get("init") == "supernet" else
               "The found model was trained from scratch (tune.init: scratch) with "
               + ("tune.train." if cfg.tune.train is not None else "the baseline's recipe."))
        lines.append(f"The found model has {f['macs'] / b['macs']:.0%} of the baseline's MACs and "
                     f"{f['params'] / b['params']:.0%} of its parameters; {ap}. {why}")
        lines.append("")
    search_summary = w.search / PARETO_JSON
    pareto_record = json.loads(search_summary.read_text()) if search_summary.is_file() else {}
    # where the search that picked the found arch scored its candidates (a kept study's, not the config's now)
    score_on = pareto_record.get("score_on") or cfg.search.score_on
    if score_on == "val" and cfg.search.strategy != "darts":
        lines += ["The found arch was picked as the best candidate on these val images (search.score_on: val): its val "
                  "AP is optimistic, and so are its differences from the baseline and the controls, which were not "
                  "picked on them.", ""]
    if cfg.report.controls and not controls and (tune.get("processes") or 1) > 1:
        lines += [f"No control archs: {CONTROLS_UNDER_TORCHRUN.format(n=tune['processes'])}.", ""]
    if controls:
        lines += [_controls_text(rows[0] if base_metrics.is_file() else None, found_row, controls,
                                 cfg.report.controls_tolerance, imported=bool(base_record.get("imported_from")),
                                 metric=matched_cost_metric(cfg.search.budget),
                                 latency=cfg.search.budget is not None and cfg.search.budget.metric == "latency",
                                 supernet_steps=(supernet_record or {}).get("step"),
                                 from_baseline=supernet_started_from_baseline(cfg, supernet_record)), ""]
    differences = ap_differences(cfg, w, rows, console, loaded)
    lines += bootstrap_lines(differences)
    lines += per_class_lines(base_record, tune)
    if init_metrics is not None:
        other = init_record.get("postprocessing") not in (None, configured_postprocessing(cfg.model))
        lines += [f"Inherited supernet weights before tuning, on {_split_of(init_record)}: AP {init_metrics['AP']:.4f}, "
                  f"AP50 {init_metrics['AP50']:.4f}" + (" (taken when the tune started, after other post-processing "
                  "than the table's)" if other else "") + ".", ""]
    tuned_export = exports.get("tune")
    qat = ((tuned_export or {}).get("int8") or {}).get("qat")
    if qat:
        after = qat.get("qat_drop", qat["drop_after"])  # records before the comparison kept the tuned file always
        kept = {"qat": "the tuned file is the INT8 file", "ptq": "it did not help, so the post-training file is "
                "the INT8 file"}.get(qat.get("kept"), "the tuned file is the INT8 file")
        lines += [f"Quantization-aware tuning of the found model ({qat['steps']} steps, fake-quantized): INT8 AP drop "
                  f"from the float model {qat['ptq_drop']['AP']:.4f} after post-training quantization, "
                  f"{after['AP']:.4f} after tuning (both run by onnxruntime on val): {kept}"
                  + (" (chosen on these same val images)." if qat.get("kept") else "."), ""]
    if tuned_export and tuned_export.get("budget"):
        bc = tuned_export["budget"]
        verdict = "within" if bc["within"] else "**OVER**"
        unit = {"macs": (1e6, "M MACs"), "params": (1e6, "M params"), "latency": (1.0, "ms")}[bc["metric"]]

        def show(v):
            return "-" if v is None else f"{v / unit[0]:.4g} {unit[1]}"
        how = f" ({bc['timed_by']})" if bc.get("timed_by") else ""
        lines += [f"Measured {bc['metric']}{how} of the exported model: {show(bc['measured'])} ({verdict} the budget "
                  f"{show(bc['max'])}; the search predicted {show(bc['predicted'])}).", ""]
    confidence_file = w.search / CONFIDENCE_JSON
    confidence = json.loads(confidence_file.read_text()) if confidence_file.is_file() else None
    pareto = w.search / PARETO_PNG
    if pareto.is_file():
        with atomic_path(w.pareto_png) as tmp:
            shutil.copyfile(pareto, tmp)
    lines += search_lines(cfg.search.strategy, pareto_record, confidence, score_on, pareto.is_file())
    diagnose = json.loads(w.diagnose.summary.read_text()) if cfg.pipeline.diagnose and w.diagnose.summary.is_file() \
        else None
    if diagnose is not None:
        lines += diagnose_lines(diagnose)
    if tune.get("genotype"):  # the found head, as FAD writes it
        box, cls = read_genotypes(tune["genotype"], f"{w.tune.metrics} genotype")
        lines += [f"Found head (tune/arch.json): box tower {format_genotype(box)}; cls tower {format_genotype(cls)}.", ""]
    searched = ("`search/` (genotype.log, genotype.json, alphas.jsonl, log.jsonl, ckpt/)" if darts else
                "`supernet/` (checkpoint, subnets' metrics), `search/` (study.journal, results.csv, best_arch.json, "
                "pareto.json/png)")
    lines += [f"Files: `baseline/` (checkpoint, metrics), {searched}, `tune/` (arch.json, checkpoint, "
              "metrics), `export/` (ONNX files, parity and latency records, classes.json)"
              + (", `diagnose/` (records, results.csv, summary.json, rank.png)" if diagnose is not None else "") + ".", ""]
    write_text_atomic(w.report_md, "\n".join(lines))
    console.print(f"report: {escape(str(w.report_md))}")
    return {"rows": rows, "initial_tune_metrics": init_metrics, "search_confidence": confidence,
            "ap_differences": differences, "latency_in_turns": latency,
            "diagnose": None if diagnose is None else {k: diagnose[k] for k in ("archs", "target", "rankers", "noise")},
            "budget": None if budget is None else budget.model_dump(),
            "supernet": None if darts else str(w.supernet.root), "genotype": tune.get("genotype")}
