"""The search's confidence (search/confidence.py): the too-small-split warning, confidence.json and the
bootstrap columns of results.csv, from a real (tiny) search."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from conftest import fake_pretrain


def test_small_split_warns_and_search_writes_its_confidence(tiny_config):
    from nasdet.stages.search import run_search

    cfg = tiny_config("ssdlite", model={"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}}, data={"check_files": False},
                      supernet={"input_sizes": [64, 96]},
                      search={"strategy": "random", "num_candidates": 3, "recalib_batches": 1, "batch_size": 4,
                              "confidence_top": 3, "confidence_resamples": 50,
                              "budget": {"metric": "macs", "max": 1e12}})
    fake_pretrain(cfg)
    buf = io.StringIO()
    summary = run_search(cfg, console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "warning: the search split has 6 images" in text and "data.search_fraction" in text
    out = Path(cfg.work_dir) / "search"
    conf = json.loads((out / "confidence.json").read_text())
    assert conf["images"] == 6 and conf["resamples"] == 50 and len(conf["candidates"]) == 3
    assert conf["verdict"] in text.replace("\n", "")
    best = summary["best"]
    assert conf["winner"] == str(best["trial"])
    for trial, c in conf["candidates"].items():  # the bootstrap's point estimate is the search's own AP
        assert c["point"] == pytest.approx(c["search_ap"], abs=1e-9)
        assert c["low"] <= c["point"] + 1e-12 and c["point"] <= c["high"] + 1e-12
    rows = {r["trial"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert {t for t, r in rows.items() if r["ap_low"] != ""} == set(conf["candidates"])
    assert rows[conf["winner"]]["p_winner_beats"] == ""


def test_large_enough_split_does_not_warn(shapes_dir):
    from nasdet.data.coco import load_coco
    from nasdet.search.confidence import MIN_SEARCH_BOXES, MIN_SEARCH_IMAGES, split_size_warning

    data = load_coco(shapes_dir / "train" / "annotations.json", shapes_dir / "train" / "images")
    msg = split_size_warning(data)
    assert len(data) < MIN_SEARCH_IMAGES and "24 images" in msg and "search.score_on: val" in msg
    on_val = split_size_warning(data, "the validation set")  # it advised score_on: val, already the setting
    assert on_val.startswith("the validation set has 24 images") and "use a larger val set" in on_val
    assert "data.search_fraction" not in on_val
    big = data.subset([i % len(data) for i in range(MIN_SEARCH_IMAGES)])
    boxes = sum(int((r.iscrowd == 0).sum()) for r in big.records)
    assert (split_size_warning(big) is None) == (boxes >= MIN_SEARCH_BOXES)


def test_score_on_val_scores_the_validation_set(tiny_config):
    from nasdet.stages.search import run_search

    cfg = tiny_config("ssdlite", model={"backbone": {"name": "ofa_mbv3", "width_mult": 0.25}}, data={"check_files": False},
                      supernet={"input_sizes": [64, 96]},
                      search={"strategy": "random", "num_candidates": 2, "recalib_batches": 1, "batch_size": 4,
                              "score_on": "val", "confidence_resamples": 20, "budget": {"metric": "macs", "max": 1e12}})
    fake_pretrain(cfg)
    buf = io.StringIO()
    run_search(cfg, console=Console(file=buf, width=200))
    assert "warning: the validation set has 8 images" in buf.getvalue()
    assert json.loads((Path(cfg.work_dir) / "search" / "confidence.json").read_text())["images"] == 8
    # pareto.json says where the candidates were scored: the report reads it, not the config (a study kept with
    # other settings was described as the config's)
    assert json.loads((Path(cfg.work_dir) / "search" / "pareto.json").read_text())["score_on"] == "val"
