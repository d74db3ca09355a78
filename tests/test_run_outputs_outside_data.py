"""A run's own output files named by the user (the search's journal, the latency lookup table) and its work dir
stay out of every data set the run reads, the classification stage's image folder included; an existing file
that is not what nasdet would write there is refused before it is touched."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_raw
from nasdet.errors import ConfigError
from test_user_data_safety import cli, data_root, hashes, one_error_line  # noqa: F401 (data_root: a fixture)


def test_search_storage_and_latency_table_inside_the_data_are_refused(tmp_path, data_root):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw(data_root, tmp_path / "work")))
    before = hashes(data_root)
    # refused before the supernet is looked for (there is none)
    for storage in (data_root / "val" / "annotations.json", data_root / "val" / "images" / "study.journal",
                    f"sqlite:///{data_root / 'val' / 'images' / 'study.db'}"):  # (connecting created the file)
        one_error_line(*cli("search", cfg, "--storage", storage), "search storage", "data set", "data.val")
    one_error_line(*cli("search", cfg, "--set", "cost.latency=lut", "--set",
                        f"cost.lut={data_root / 'val' / 'annotations.json'}"), "cost.lut", "the data set's own")
    assert hashes(data_root) == before
    assert sorted(p.name for p in (data_root / "val" / "images").iterdir()) == sorted(before_names(before))
    assert not (tmp_path / "work").exists()
    # an SQLite file outside the data is not created by the search that is refused for want of a supernet
    one_error_line(*cli("search", cfg, "--storage", f"sqlite:///{tmp_path / 'study.db'}"), "nasdet pretrain")
    assert not (tmp_path / "study.db").exists()


def before_names(hashed: dict[str, str]) -> list[str]:
    return [Path(k).name for k in hashed if k.startswith("val/images/")]


def test_a_latency_table_file_that_is_not_one_is_refused_unchanged(tmp_path, data_root):
    from nasdet.search.latency import LatencyTable

    coco = tmp_path / "annotations.json"
    coco.write_bytes((data_root / "val" / "annotations.json").read_bytes())
    jpg = tmp_path / "a.jpg"
    jpg.write_bytes((data_root / "val" / "images" / sorted(before_names(hashes(data_root)))[0]).read_bytes())
    for path, said in ((coco, "it holds '"), (jpg, "not JSON")):
        before = path.read_bytes()
        with pytest.raises(ConfigError, match=f"cost.lut {path} is not a latency lookup table") as e:
            LatencyTable(path)
        assert said in str(e.value)
        assert path.read_bytes() == before
    # nasdet's own table is read and extended
    table = tmp_path / "lut.json"
    t = LatencyTable(table)
    t.blocks["b"] = 1.0
    t.save()
    t2 = LatencyTable(table, threads=7)
    t2.rest["96"] = 2.0
    t2.save()
    assert LatencyTable(table).blocks == {"b": 1.0} and len(json.loads(table.read_text())) == 2


def test_a_work_dir_inside_the_classification_images_is_refused(tmp_path, data_root):
    from nasdet.data.synthetic_classes import make_synthetic_imagefolder

    folder = tmp_path / "classes"
    make_synthetic_imagefolder(folder, n_train=8, n_val=8, size=32, seed=0)
    raw = tiny_raw(data_root, tmp_path / "work")
    raw["model"]["backbone"] = {"name": "detnas_tiny"}
    raw["model"]["detector"] = "faster_rcnn"
    raw["model"].pop("extra_channels", None)
    raw["model"]["fpn_channels"] = 64
    raw["classify"] = {"root": str(folder), "input_size": 32}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    before = hashes(folder)
    for inside in (folder / "train", folder):
        one_error_line(*cli("classify", cfg, "--work-dir", inside), "classify.root", "data set")
    assert hashes(folder) == before and sorted(p.name for p in (folder / "train").iterdir()) == \
        sorted({Path(k).parts[1] for k in before if k.startswith("train/")})


def test_the_run_record_never_rewrites_a_config_nasdet_did_not_write(tmp_path, data_root):
    """WORK_DIR/config.yaml, the record of what ran, was written over whatever was there: the user's own
    config kept in its run folder lost its comments and had a one-off --set baked in."""
    from nasdet.config import load_config, save_config, save_run_record

    wd = tmp_path / "run"
    wd.mkdir()
    users = wd / "config.yaml"
    users.write_text("# my experiment\n" + yaml.safe_dump(tiny_raw(data_root, wd)))
    kept = users.read_text()
    cfg = load_config(users, ["train.optimizer.lr=0.01"])
    written = save_run_record(cfg, wd / "config.yaml")
    assert written == wd / "config.nasdet.yaml" and users.read_text() == kept
    record = written.read_text()
    assert record.startswith("# nasdet's record") and yaml.safe_load(record)["train"]["optimizer"]["lr"] == 0.01

    # another tool's config.yaml in the work dir is left alone too
    other = tmp_path / "proj"
    other.mkdir()
    (other / "config.yaml").write_text("lr: 0.1\n")
    elsewhere = tmp_path / "cfg.yaml"
    elsewhere.write_text(yaml.safe_dump(tiny_raw(data_root, tmp_path / "work")))
    cfg = load_config(elsewhere)
    assert save_run_record(cfg, other / "config.yaml") == other / "config.nasdet.yaml"
    assert (other / "config.yaml").read_text() == "lr: 0.1\n"
    # the record says where the run went (--work-dir), not the config's work_dir
    assert yaml.safe_load((other / "config.nasdet.yaml").read_text())["work_dir"] == str(other)

    # nasdet's own record is rewritten: with its header, or an older one (the plain resolved dump)
    fresh = tmp_path / "work"
    fresh.mkdir()
    save_config(cfg, fresh / "config.yaml")  # a record as nasdet wrote it before the header
    assert save_run_record(load_config(elsewhere, ["seed=3"]), fresh / "config.yaml") == fresh / "config.yaml"
    assert yaml.safe_load((fresh / "config.yaml").read_text())["seed"] == 3
    # a rerun from the record itself: kept when nothing changed, not rewritten under the user with a --set
    again = fresh / "config.yaml"
    before = again.read_text()
    assert save_run_record(load_config(again), again) == again and again.read_text() == before
    assert save_run_record(load_config(again, ["seed=4"]), again) == fresh / "config.nasdet.yaml"
    assert again.read_text() == before


def test_a_work_dir_inside_the_folders_an_image_list_names_is_refused(tmp_path, data_root):
    """YOLO splits given as image lists (``train: train.txt``): the listed images' folders and their labels
    twins are the data set's, as a split given as a folder is."""
    from PIL import Image

    yolo = tmp_path / "yolo"
    for split in ("train", "val"):
        (yolo / split / "images").mkdir(parents=True)
        (yolo / split / "labels").mkdir(parents=True)
        Image.new("RGB", (32, 24), (200, 10, 10)).save(yolo / split / "images" / "a.jpg")
        (yolo / split / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    lists = tmp_path / "lists"
    lists.mkdir()
    for split in ("train", "val"):
        (lists / f"{split}.txt").write_text(f"{yolo / split / 'images' / 'a.jpg'}\n")
    (lists / "data.yaml").write_text("train: train.txt\nval: val.txt\nnames: [cat]\n")
    raw = tiny_raw(data_root, tmp_path / "work")
    raw["data"] = {"format": "yolo", "data_yaml": str(lists / "data.yaml"), "search_fraction": 0.5}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    before = hashes(yolo)
    for inside in (yolo / "train" / "images" / "w", yolo / "val" / "labels" / "w"):
        out = one_error_line(*cli("cost", cfg, "--no-latency", "--work-dir", inside), "data set")
        assert "train.txt" in out or "val.txt" in out, out
        assert not inside.exists()
    assert hashes(yolo) == before
    # and the same set as a list through data.train.images
    (tmp_path / "names.yaml").write_text("names: [cat]\n")
    raw["data"] = {"format": "yolo", "data_yaml": str(tmp_path / "names.yaml"), "search_fraction": 0.5,
                   "train": {"images": str(lists / "train.txt")}, "val": {"images": str(lists / "val.txt")}}
    cfg.write_text(yaml.safe_dump(raw))
    one_error_line(*cli("cost", cfg, "--no-latency", "--work-dir", yolo / "train" / "labels" / "w"),
                   "data.train.images (train.txt)")


def test_a_stage_folder_linked_into_a_data_set_is_refused_before_anything_is_written(tmp_path, data_root):
    """A stage folder that is a link (to another disk, say) into a folder of images: the work dir passed its
    checks, and the checkpoint, log and lock were written among the val images (QA, session 27)."""
    cfg = tmp_path / "cfg.yaml"
    raw = tiny_raw(data_root, tmp_path / "work")
    raw["train"]["max_steps"] = 1
    cfg.write_text(yaml.safe_dump(raw))
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "baseline").symlink_to(data_root / "val" / "images")
    before = hashes(data_root)
    one_error_line(*cli("train", cfg), "stage folder", "folder of images")
    assert hashes(data_root) == before
