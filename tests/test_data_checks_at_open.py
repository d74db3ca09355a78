"""Checks made when a data set is opened rather than late: a COCO / VOC image whose size is not its annotated
one (resized after labelling) is an error before training starts (and in ``data stats``), not when the image is
first read; and an output (work dir, search storage, cost.lut, to-yolo's / make-synthetic's OUT) inside the
folder that holds a split's data, inside the data set's root or inside a folder of images is refused, while a
project root that holds the data set further down stays accepted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import tiny_raw
from nasdet.errors import ConfigError, DataError
from test_user_data_safety import cli, hashes, one_error_line

REPO = Path(__file__).resolve().parent.parent


def synthetic(folder: Path) -> Path:
    from nasdet.data.synthetic import make_synthetic

    make_synthetic(folder, n_train=4, n_val=2, size=32, seed=0, workers=1)
    return folder


def resize(file: Path, factor: int = 2) -> tuple[int, int]:
    """Re-export an image at another size (what an editor does after labelling); returns its new size."""
    with Image.open(file) as im:
        big = im.resize((im.width * factor, im.height * factor))
    big.save(file)
    return big.size


def annotated(ann: Path, file_name: str) -> dict:
    return next(im for im in json.loads(ann.read_text())["images"] if im["file_name"] == file_name)


# ------------------------------------------------------------------------------------- image sizes at open
def test_a_coco_image_resized_after_labelling_is_an_error_when_the_set_is_opened(tmp_path, monkeypatch):
    import nasdet.data.dataset as dataset
    from nasdet.data.coco import load_coco

    data = synthetic(tmp_path / "shapes")
    ann, images = data / "train" / "annotations.json", data / "train" / "images"
    first, second = sorted(images.iterdir())[1:3]
    width, height = resize(first)
    im = annotated(ann, first.name)
    said = (rf"{ann}: image file {first} \(image id {im['id']}\) is {width}x{height} but the annotations say "
            rf"{im['width']}x{im['height']}$")
    with pytest.raises(DataError, match=said):
        load_coco(ann, images)
    # the message is the one reading the image gives (that check stays: files change), which data.check_files:
    # false leaves alone
    late = load_coco(ann, images, check_files=False)
    with pytest.raises(DataError) as at_read:
        late.load_image(1)
    with pytest.raises(DataError) as at_open:
        load_coco(ann, images)
    assert str(at_open.value) == str(at_read.value)
    # every mismatch is counted, through the thread pool of a large set too
    resize(second)
    monkeypatch.setattr(dataset, "POOL_FROM", 2)
    dataset._HEADER_SIZES.clear()
    with pytest.raises(DataError, match=r"image id \d+\) is .* \(and 1 more image\(s\) whose size is not the annotated"):
        load_coco(ann, images)
    # a file that is not an image is left to the read path and check_images_open, as before
    val = data / "val" / "images"
    broken = sorted(val.iterdir())[0]
    broken.write_bytes(b"<html>an error page</html>")
    assert len(load_coco(data / "val" / "annotations.json", val)) == 2


def test_data_stats_and_training_report_the_resized_image_before_they_start(tmp_path):
    data = synthetic(tmp_path / "shapes")
    victim = sorted((data / "val" / "images").iterdir())[0]
    width, height = resize(victim)
    cfg = tmp_path / "cfg.yaml"
    raw = tiny_raw(data, tmp_path / "work")
    raw["train"]["max_steps"] = 1
    cfg.write_text(yaml.safe_dump(raw))
    for args in (("data", "stats", cfg), ("train", cfg)):
        one_error_line(*cli(*args), str(victim), f"is {width}x{height} but the annotations say")
    assert not (tmp_path / "work" / "baseline").exists()  # nothing trained
    # a training image that is not an image: training meets it when an epoch reads it (as documented); the
    # validation command names it (it said nothing)
    broken = sorted((data / "train" / "images").iterdir())[1]
    broken.write_bytes(b"<html>an error page</html>")
    one_error_line(*cli("data", "stats", cfg, "--split", "train"), str(broken), "cannot be decoded")


def voc_year(root: Path, stored: tuple[int, int], said: tuple[int, int]) -> Path:
    """A VOC year folder of two images: ``b`` stored at ``stored``, its <size> ``said``; ``a`` right."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, (w, h), (sw, sh) in (("a", (48, 40), (48, 40)), ("b", stored, said)):
        Image.new("RGB", (w, h), (90, 20, 20)).save(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{sw}</width><height>{sh}</height>"
            "<depth>3</depth></size><object><name>cat</name><difficult>0</difficult><bndbox><xmin>2</xmin>"
            "<ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    return root


def test_a_voc_image_whose_size_is_not_its_size_element_is_an_error_when_opened(tmp_path):
    from nasdet.data.voc import load_voc

    root = voc_year(tmp_path / "VOC2007", stored=(192, 156), said=(96, 78))
    file = root / "JPEGImages" / "b.jpg"
    with pytest.raises(DataError, match=rf"{root} \[train\]: image file {file} \(image id 2\) is 192x156 but the "
                                        r"annotations say 96x78$"):
        load_voc(root, "train", classes=["cat"])
    ok = voc_year(tmp_path / "ok" / "VOC2007", stored=(96, 78), said=(96, 78))
    assert len(load_voc(ok, "train", classes=["cat"])) == 2


def test_the_size_check_applies_the_exif_orientation_as_the_read_path_does(tmp_path):
    """A phone photo stored 40x24 with orientation 6 is read 24x40: annotated so, it opens; annotated in the
    stored frame, it is the read path's error, at open."""
    from nasdet.data.coco import load_coco

    images = tmp_path / "images"
    images.mkdir()
    im = Image.new("RGB", (40, 24), (10, 200, 10))
    exif = im.getexif()
    exif[0x0112] = 6
    for name in ("upright.jpg", "stored.jpg"):  # two files: a decoded image may be kept by file (DECODED)
        im.save(images / name, exif=exif)
    ann = tmp_path / "a.json"

    def write(name, width, height):
        ann.write_text(json.dumps({"images": [{"id": 1, "file_name": name, "width": width, "height": height}],
                                   "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))

    write("upright.jpg", 24, 40)
    assert load_coco(ann, images).load_image(0).shape == (3, 40, 24)
    write("stored.jpg", 40, 24)
    with pytest.raises(DataError) as at_read:
        load_coco(ann, images, check_files=False).load_image(0)
    with pytest.raises(DataError, match="is 24x40 after the rotation its EXIF orientation asks for") as at_open:
        load_coco(ann, images)
    assert str(at_open.value) == str(at_read.value)


def test_headers_are_read_once_per_file_version(tmp_path, monkeypatch, capsys):
    """Every stage opens the sets again: a reopen reads no header, but a file replaced since is read again. A
    large set says first that it reads them (COCO train2017: some 10-30 s)."""
    import nasdet.data.dataset as dataset
    from nasdet.data.coco import load_coco

    data = synthetic(tmp_path / "shapes")
    ann, images = data / "train" / "annotations.json", data / "train" / "images"
    reads = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda f, *a, **k: reads.append(f) or real(f, *a, **k))
    monkeypatch.setattr(dataset, "NOTE_FROM", 4)
    load_coco(ann, images)
    assert len(reads) == 4
    assert f"{ann}: reading the headers of 4 images to check their sizes" in capsys.readouterr().err
    load_coco(ann, images)
    assert len(reads) == 4 and capsys.readouterr().err == ""
    victim = sorted(images.iterdir())[0]
    resize(victim)
    with pytest.raises(DataError, match=f"image file {victim} "):
        load_coco(ann, images)


# ------------------------------------------------------------------------------------ outputs outside the data
def config_file(tmp_path: Path, data: Path, work: Path | str, relative_to: Path | None = None) -> Path:
    raw = tiny_raw(data, work)
    if relative_to is not None:
        for split in ("train", "val"):
            for key, value in raw["data"][split].items():
                raw["data"][split][key] = str(Path(value).relative_to(relative_to))
    path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def refused(cfg_path: Path, out: Path | str | None = None) -> str | None:
    """The work dir's refusal (None: accepted)."""
    from nasdet.config import load_config
    from nasdet.workdir import WorkDir

    try:
        WorkDir.of(load_config(cfg_path), out)
    except ConfigError as e:
        return str(e)
    return None


def test_a_work_dir_inside_a_coco_split_folder_is_refused(tmp_path):
    """``shapes/train`` holds annotations.json and images/: the config named the file and the image folder, and a
    work dir beside them was accepted."""
    from nasdet.user_data import refuse_output_in_data
    from nasdet.config import load_config

    data = synthetic(tmp_path / "shapes")
    cfg = config_file(tmp_path, data, tmp_path / "work")
    before = hashes(data)
    for split in ("train", "val"):
        said = refused(cfg, data / split / "w")
        assert said and f"is inside the data set folder {data / split} (data.{split}'s folder, holding its image " \
                         "folder and annotations file)" in said, said
    one_error_line(*cli("cost", cfg, "--no-latency", "--work-dir", data / "train" / "w"), "data.train's folder")
    # the other outputs under the same rule
    data_folders = load_config(cfg).data_folders()
    for path, what in ((data / "train" / "study.journal", "search storage"), (data / "val" / "lut.json", "cost.lut")):
        with pytest.raises(ConfigError, match=f"{what} .* is inside the data set folder {data / path.parent.name} "):
            refuse_output_in_data(path, data_folders, what)
    one_error_line(*cli("search", cfg, "--storage", data / "train" / "study.journal"), "search storage",
                   "data.train's folder")
    one_error_line(*cli("data", "make-synthetic", data / "train" / "more", "--train", "2", "--val", "1", "--size",
                        "32"), "inside the data set folder")
    assert hashes(data) == before and not (data / "train" / "w").exists() and not (tmp_path / "work").exists()


def test_the_data_sets_root_is_refused_and_a_project_root_holding_it_accepted(tmp_path, monkeypatch):
    """``data/shapes`` holds the config's train/ and val/: its own root; the project holding ``data/`` is not."""
    project = tmp_path / "proj"
    data = synthetic(project / "data" / "shapes")
    before = hashes(data)
    # from the project's root, relative paths: runs/x is beside data/, accepted
    monkeypatch.chdir(project)
    assert refused(config_file(tmp_path, data, "runs/x", relative_to=project)) is None
    assert refused(config_file(tmp_path, data, project / "runs" / "x")) is None
    said = refused(config_file(tmp_path, data, "data/shapes/runs/x", relative_to=project))
    assert said and f"inside the data set folder {data} (the data set's root, holding train/ and val/)" in said, said
    # from inside the data set (QA's case): runs/x would be created beside train/ and val/
    monkeypatch.chdir(data)
    cfg = config_file(tmp_path, data, "runs/x", relative_to=data)
    one_error_line(*cli("cost", cfg, "--no-latency"), "the data set's root, holding train/ and val/")
    assert not (data / "runs").exists()
    # to-yolo's and make-synthetic's OUT, which have no config naming the data set's root, find it
    monkeypatch.chdir(tmp_path)
    cfg = config_file(tmp_path, data, tmp_path / "work")
    one_error_line(*cli("data", "to-yolo", cfg, data / "yolo"), "inside the data set folder", "train/ and val/")
    one_error_line(*cli("data", "make-synthetic", data / "more", "--train", "2", "--val", "1", "--size", "32"),
                   "a data set's root, holding the splits train/ and val/")
    assert hashes(data) == before
    code, out, exc = cli("data", "make-synthetic", project / "more", "--train", "2", "--val", "1", "--size", "32")
    assert code == 0 and exc is None, out
    # a scratch folder holding several unrelated sets, not named as splits, is no data set's root
    code, out, exc = cli("data", "make-synthetic", tmp_path / "proj2" / "synth", "--train", "2", "--val", "1",
                         "--size", "32")
    assert code == 0 and exc is None, out


def test_the_roots_of_coco_voc_and_yolo_layouts(tmp_path, monkeypatch):
    """COCO's own layout (annotations/ + train2017/ + val2017/), VOC07+12 (VOCdevkit/) and a Roboflow YOLO
    export (train/images + train/labels): each root and split folder is refused, the project root holding it
    accepted, and a home folder is never taken for a data set's root."""
    project = tmp_path / "proj"
    project.mkdir()
    monkeypatch.chdir(project)
    coco = {"annotations": "data/coco/annotations/instances_train2017.json", "images": "data/coco/train2017"}
    raw = tiny_raw(tmp_path, "runs/x")
    raw["data"]["train"] = coco
    raw["data"]["val"] = {k: v.replace("train", "val") for k, v in coco.items()}
    voc = {**raw, "data": {"format": "voc", "classes": ["cat"],
                           "train": {"root": ["data/VOCdevkit/VOC2007", "data/VOCdevkit/VOC2012"],
                                     "split": ["trainval", "trainval"]},
                           "val": {"root": "data/VOCdevkit/VOC2007", "split": "test"}}}
    yolo_root = project / "data" / "rf"
    for split in ("train", "valid"):
        for sub in ("images", "labels"):
            (yolo_root / split / sub).mkdir(parents=True)
    (yolo_root / "data.yaml").write_text("train: train/images\nval: valid/images\nnames: [cat]\n")
    yolo = {**raw, "data": {"format": "yolo", "data_yaml": str(yolo_root / "data.yaml")}}
    ultralytics_root = project / "data" / "ul"  # Ultralytics' own layout: images/train beside labels/train
    for split in ("train", "val"):
        for sub in ("images", "labels"):
            (ultralytics_root / sub / split).mkdir(parents=True)
    (ultralytics_root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [cat]\n")
    ultralytics = {**raw, "data": {"format": "yolo", "data_yaml": str(ultralytics_root / "data.yaml")}}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(ultralytics))
    said = refused(cfg, "data/ul/labels/run")  # was accepted: a run written among the label folders
    assert said and "(the root of the data set's label folders, holding train/ and val/)" in said, said
    said = refused(cfg, "data/ul/images/run")
    assert said and "(the root of the data set's image folders, holding train/ and val/)" in said, said
    one_year = {**voc, "data": {**voc["data"], "train": {"root": "data/VOCdevkit/VOC2007", "split": "trainval"}}}
    cfg.write_text(yaml.safe_dump(one_year))  # as the VOC2007 tarball unpacks: VOCdevkit/ still the root
    said = refused(cfg, "data/VOCdevkit/runs")
    assert said and "(the data set's root, VOCdevkit/)" in said, said
    for layout, root, inner in ((raw, "data/coco", None), (voc, "data/VOCdevkit", None), (yolo, "data/rf", "train"),
                                (ultralytics, "data/ul", None)):
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(layout))
        assert refused(cfg) is None  # runs/x in the project root
        said = refused(cfg, f"{root}/runs/x")
        assert said and f"{project / root} (the data set's root" in said, said
        if inner:
            said = refused(cfg, f"{root}/{inner}/w")
            assert said and "'s folder, holding its image folder and label folder" in said, said
    # split folders, or a split's annotations and images, directly in the home folder: home stays usable
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    data = synthetic(home)
    cfg = config_file(tmp_path, data, home / "runs" / "x")
    assert refused(cfg) is None
    assert "data.train's folder" in refused(cfg, data / "train" / "w")
    raw = tiny_raw(data, home / "runs" / "x")
    raw["data"]["val"] = {"annotations": str(home / "annotations.json"), "images": str(home / "images")}
    cfg.write_text(yaml.safe_dump(raw))
    assert refused(cfg) is None


def test_a_work_dir_inside_a_folder_of_images_is_refused(tmp_path):
    """Not the config's data, but a folder of images (a YOLO or ImageFolder loader globs it recursively): what a
    run writes there would join that set."""
    data = synthetic(tmp_path / "shapes")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16)).save(pictures / f"{i}.jpg")
    cfg = config_file(tmp_path, data, tmp_path / "work")
    said = refused(cfg, pictures / "runs" / "x")
    assert said and f"is inside the folder of images {pictures}" in said, said
    one_error_line(*cli("search", cfg, "--storage", pictures / "study.journal"), "folder of images")
    # a project folder with a picture among its files is no folder of images
    project = tmp_path / "project"
    project.mkdir()
    for name in ("README.md", "train.py", "setup.cfg"):
        (project / name).write_text("x")
    Image.new("RGB", (16, 16)).save(project / "logo.png")
    assert refused(cfg, project / "runs" / "x") is None


def test_every_shipped_config_and_the_demo_keep_their_work_dir(monkeypatch):
    monkeypatch.chdir(REPO)
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert configs and any(p.name == "pipeline_shapes.yaml" for p in configs)
    for path in configs:
        assert refused(path) is None, path
    # the demo's own data: its folders are refused, its work dir not
    demo = REPO / "configs" / "demo" / "pipeline_shapes.yaml"
    assert yaml.safe_load(demo.read_text())["work_dir"] == "runs/demo_pipeline"
    assert "data.train's folder" in refused(demo, "data/shapes/train/w")
    assert "the data set's root" in refused(demo, "data/shapes/runs")


def test_commands_without_a_config_find_an_ultralytics_layout_around_their_output(tmp_path):
    """to-yolo's and make-synthetic's OUT look at the folders above them for a data set: Ultralytics' images/train
    beside labels/train (label .txt files, no annotations file) was not one, and both wrote into labels/ and the
    set's root (QA, session 27)."""
    root = tmp_path / "ul"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(root / "images" / split / "a.jpg")
        (root / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    before = hashes(root)
    for out in (root / "labels" / "syn", root / "labels" / "train" / "syn", root / "syn"):
        one_error_line(*cli("data", "make-synthetic", out, "--train", "2", "--val", "1", "--size", "32"),
                       "inside the data set folder", str(root))
        assert not out.exists()
    assert hashes(root) == before


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_corrupt_image_read_in_a_loader_worker_ends_the_command(shapes_dir, tmp_path, split):
    """qa_docs #5: the error line was printed, then the command hung for ever: multiprocessing's exit hook joined a
    loader worker that ignores SIGTERM (it serves through a scheduler's), and the worker outlived a kill. A val image
    (the end-of-training eval) then printed torch's "worker killed" traceback (qa_s33 #3)."""
    import shutil
    import subprocess
    import sys

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    for image in sorted((data / split / "images").iterdir())[: 1 if split == "val" else None]:
        image.write_bytes(image.read_bytes()[:700])  # its header passes the check at open; decoding fails in the worker
    raw = tiny_raw(data, tmp_path / "wd")
    raw["data"]["num_workers"] = 1
    raw["train"].update(max_steps=2, threads=1, epochs=1)
    raw["eval"].update(max_images=4, batch_size=4)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    run = subprocess.run([sys.executable, "-m", "nasdet", "train", str(tmp_path / "c.yaml")], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    said = run.stdout + run.stderr
    assert run.returncode == 2, said[-2000:]
    assert str(data / split / "images") in said and "cannot be decoded" in said
    assert "Traceback" not in said and "Exception ignored" not in said
