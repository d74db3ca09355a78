"""Train/search split and data set statistics."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from nasdet.data.dataset import DetectionDataset, ImageRecord
from nasdet.data.split import split_train_search
from nasdet.data.stats import REL_SIZE_BINS, dataset_stats, stats_tables


# ------------------------------------------------------------------------------------------- split
def test_split_is_deterministic_and_pinned():
    assert split_train_search(10, 0.3, 0) == split_train_search(10, 0.3, 0)
    # pinned: the split must never change across processes, platforms or library versions
    assert split_train_search(10, 0.3, 0) == ([1, 2, 3, 4, 5, 8, 9], [0, 6, 7])
    assert split_train_search(20, 0.25, 42)[1] == [0, 6, 8, 10, 11]
    assert split_train_search(100, 0.2, 0) != split_train_search(100, 0.2, 1)


@pytest.mark.parametrize("n,fraction", [(0, 0.5), (1, 0.5), (2, 0.01), (7, 0.5), (100, 0.1), (1000, 0.999)])
def test_split_disjoint_covering_sorted(n, fraction):
    train, search = split_train_search(n, fraction, seed=3)
    assert train == sorted(train) and search == sorted(search)
    assert not set(train) & set(search)
    assert sorted(train + search) == list(range(n))
    if n >= 2:
        assert len(search) >= 1 and len(train) >= 1
    if n >= 100:
        assert len(search) == round(n * fraction)


def test_split_zero_fraction_keeps_everything():
    assert split_train_search(5, 0.0) == ([0, 1, 2, 3, 4], [])


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan")])
def test_split_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match=str(bad)):
        split_train_search(10, bad)


# ------------------------------------------------------------------------------------------- stats
def _rec(i, w, h, boxes, labels, crowd):
    return ImageRecord(i, Path(f"{i}.jpg"), w, h, boxes, labels, crowd)


@pytest.fixture
def stats_ds():
    records = [
        # side/image side: 0.02, 0.05, 0.4; areas 4, 25 (small), 1600 (medium); plus one crowd box
        _rec(1, 100, 100, [[0, 0, 2, 2], [0, 0, 5, 5], [0, 0, 40, 40], [0, 0, 100, 100]], [1, 1, 2, 2], [0, 0, 0, 1]),
        # 0.5 / 10000 (large); 0.16 / 1024 = 32^2 (medium: the bins are half-open)
        _rec(2, 200, 200, [[0, 0, 100, 100], [10, 10, 42, 42]], [3, 1], [0, 0]),
        _rec(3, 50, 50, [], [], []),
        _rec(4, 50, 50, [[0, 0, 10, 10]], [1], [1]),
    ]
    return DetectionDataset(records, ["a", "b", "c"], [11, 12, 13], source="fixture.json")


def test_dataset_stats_counts(stats_ds):
    s = dataset_stats(stats_ds)
    assert (s["images"], s["boxes"], s["crowd_boxes"]) == (4, 7, 2)
    assert (s["images_without_boxes"], s["images_only_crowd"]) == (1, 1)
    assert s["classes"] == {
        "a": {"id": 11, "boxes": 4, "crowd": 1, "images": 2},
        "b": {"id": 12, "boxes": 2, "crowd": 1, "images": 1},
        "c": {"id": 13, "boxes": 1, "crowd": 0, "images": 1},
    }
    assert list(s["relative_size"]) == list(REL_SIZE_BINS)
    assert list(s["relative_size"].values()) == [1, 1, 0, 1, 2, 0]
    assert s["coco_area"] == {"small": 2, "medium": 2, "large": 1}
    # COCO's own areas (a segmentation's: smaller than the box) decide the evaluation's size bins, and the stats'
    # (it binned box areas: its "large" count disagreed with the APl the evaluation took)
    stats_ds.records[1].areas = np.array([5000.0, 900.0], dtype=np.float32)
    assert dataset_stats(stats_ds)["coco_area"] == {"small": 3, "medium": 2, "large": 0}
    json.dumps(s)  # plain python types


def test_stats_tables_render(stats_ds):
    tables = stats_tables(dataset_stats(stats_ds), "train: fixture.json")
    assert len(tables) == 4 and all(isinstance(t, Table) for t in tables)
    console = Console(file=io.StringIO(), width=160, record=True)
    for t in tables:
        console.print(t)
    text = console.export_text()
    assert "train: fixture.json" in text and "32-64%" in text and "medium" in text
    assert "40.0%" in text  # 2 of 5 non-crowd boxes are 32-64%


def test_stats_tables_show_brackets_in_sources_and_class_names(stats_ds):
    """A YOLO source is `data.yaml [train]`: rich read `[train]` as markup and dropped it from the title."""
    stats = dataset_stats(stats_ds)
    stats["classes"] = {"[b]old": stats["classes"]["a"]}
    console = Console(file=io.StringIO(), width=160, record=True)
    for t in stats_tables(stats, "train: data.yaml [train]"):
        console.print(t)
    text = console.export_text()
    assert "train: data.yaml [train]" in text and "[b]old" in text

