"""No nasdet command deletes or overwrites a file it did not write (issue 24): every writing command pointed
at the data set's folders, or at a folder holding another data set, is refused before anything is written,
and every file that was there is byte-identical afterwards. In process (CliRunner): the refusals come
before any training, so the whole sweep takes a few seconds."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_raw
from nasdet.cli import app


def cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    exc = res.exception if not isinstance(res.exception, SystemExit) else None
    return res.exit_code, res.output, exc


def one_error_line(code, out, exc, *needles):
    assert exc is None, f"raised {exc!r} instead of printing one line"
    assert code == 2, out
    err = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in out, out
    flat = " ".join(out.split())
    for needle in needles:  # a path may be wrapped anywhere
        assert needle in flat or needle.replace(" ", "") in "".join(out.split()), (needle, out)
    return flat


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A small COCO set of our own (train/, val/): the config's data."""
    from nasdet.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("data")
    make_synthetic(root, n_train=4, n_val=2, size=64, seed=0, workers=1)
    return root


def user_yolo_set(folder: Path) -> Path:
    """Someone's own YOLO set (not written by nasdet): data.yaml, train/images, train/labels."""
    for split in ("train", "val"):
        (folder / split / "images").mkdir(parents=True)
        (folder / split / "labels").mkdir(parents=True)
        Image.new("RGB", (32, 24), (200, 10, 10)).save(folder / split / "images" / "000001.jpg")
        (folder / split / "labels" / "000001.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (folder / "data.yaml").write_text("train: train/images\nval: val/images\nnames: [cat]\n")
    return folder


def config_file(tmp_path, data_root, work_dir) -> Path:
    raw = tiny_raw(data_root, work_dir)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


WORK_DIR_COMMANDS = [("train",), ("pretrain",), ("search",), ("tune",), ("export",), ("eval",), ("cost",),
                     ("diagnose",), ("pipeline",)]


@pytest.mark.parametrize("target", ["images", "annotations", "root", "other_set"])
def test_every_writing_command_leaves_the_data_untouched(tmp_path, data_root, target):
    other = user_yolo_set(tmp_path / "other")
    out = {"images": data_root / "train" / "images", "annotations": data_root / "val",
           "root": data_root, "other_set": other}[target]
    cfg = config_file(tmp_path, data_root, tmp_path / "work")
    before_data, before_other = hashes(data_root), hashes(other)
    for command in WORK_DIR_COMMANDS:
        line = one_error_line(*cli(*command, cfg, "--work-dir", out), str(out))
        assert "data" in line, line
    # the config's work_dir itself inside the data, no --work-dir
    cfg_inside = config_file(tmp_path, data_root, data_root / "train" / "images" / "run")
    one_error_line(*cli("train", cfg_inside), str(data_root / "train" / "images"))
    one_error_line(*cli("data", "to-yolo", cfg, out), str(out))
    if target == "other_set":  # (the config's set here is make-synthetic's own: it may regenerate it)
        one_error_line(*cli("data", "make-synthetic", out, "--train", 2, "--val", 1, "--size", 64,
                            "--format", "yolo"), str(out))
    assert hashes(data_root) == before_data
    assert hashes(other) == before_other
    assert not (tmp_path / "work").exists()


def test_to_yolo_into_a_fresh_folder_then_again(tmp_path, data_root):
    """The refusal does not block the ordinary use: a new folder, then a rerun into the folder it wrote. The
    data.data_yaml it tells the user to use keeps the folder's [v2] (rich markup)."""
    cfg = config_file(tmp_path, data_root, tmp_path / "work")
    before = hashes(data_root)
    out_dir = tmp_path / "yolo[v2]"
    for _ in range(2):
        code, out, exc = cli("data", "to-yolo", cfg, out_dir)
        assert code == 0 and exc is None, out
        assert f"data.data_yaml:{out_dir / 'data.yaml'}" in "".join(out.split()), out  # rich wraps lines
    assert (out_dir / "train" / "labels").is_dir()
    assert hashes(data_root) == before


def test_to_yolo_again_with_fewer_images_keeps_none_of_the_earlier_ones(tmp_path, data_root):
    """A rerun into its own folder left the earlier run's images and labels: the set read back was the old one."""
    from nasdet.data.coco import load_coco
    from nasdet.data.yolo import load_yolo, write_yolo

    train = load_coco(data_root / "train" / "annotations.json", data_root / "train" / "images")
    out = tmp_path / "yolo"
    write_yolo({"train": train}, out)
    assert len(load_yolo(out / "data.yaml", "train")) == 4
    write_yolo({"train": train.subset([1, 3])}, out)
    again = load_yolo(out / "data.yaml", "train")
    assert sorted(r.file.name for r in again.records) == sorted(train.records[i].file.name for i in (1, 3))
    assert len(list((out / "train" / "labels").iterdir())) == 2


def test_to_yolo_into_a_make_synthetic_yolo_folder_is_refused(tmp_path, data_root):
    """Its data.yaml is nasdet's, but its COCO images and annotations.json are a data set: to-yolo replaced
    the images."""
    from nasdet.data.coco import load_coco
    from nasdet.data.yolo import write_yolo
    from nasdet.errors import ConfigError

    code, out, exc = cli("data", "make-synthetic", tmp_path / "s", "--train", 2, "--val", 1, "--size", 48,
                         "--format", "yolo", "--workers", 1)
    assert code == 0 and exc is None, out
    before = hashes(tmp_path / "s")
    train = load_coco(data_root / "train" / "annotations.json", data_root / "train" / "images")
    with pytest.raises(ConfigError, match=r"holds a data set that is not its own earlier output \(.*annotations.json\)"):
        write_yolo({"train": train}, tmp_path / "s")
    assert hashes(tmp_path / "s") == before


def test_make_synthetic_into_its_own_folder_again(tmp_path):
    for n in (3, 2):
        code, out, exc = cli("data", "make-synthetic", tmp_path / "s", "--train", n, "--val", 1, "--size", 64,
                             "--format", "yolo", "--workers", 1)
        assert code == 0 and exc is None, out


def test_coco_file_name_outside_the_image_folder_is_refused(tmp_path, data_root):
    """A COCO file_name of ../../x would make to-yolo hard-link a file from outside the data set."""
    from nasdet.data.coco import load_coco
    from nasdet.errors import DataError

    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (64, 64)).save(secret)
    images = tmp_path / "set" / "images"
    images.mkdir(parents=True)
    rel = "../../secret.jpg"
    assert (images / rel).resolve() == secret.resolve()
    ann = json.loads((data_root / "val" / "annotations.json").read_text())
    ann["images"][0]["file_name"] = rel
    (tmp_path / "set" / "annotations.json").write_text(json.dumps(ann))
    with pytest.raises(DataError) as e:
        load_coco(tmp_path / "set" / "annotations.json", images, check_files=False)
    msg = str(e.value)
    assert "annotations.json" in msg and f"image id {ann['images'][0]['id']}" in msg and rel in msg


# ------------------------------------------------------- to-yolo and make-synthetic touch only their own files
def frames(folder: Path, names=("000001.jpg", "000002.jpg")) -> Path:
    """A user's unlabelled images (ffmpeg-style names), the first stage of many data sets."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (40, 30), (0, 0, 200)).save(folder / name)
    return folder


def test_to_yolo_never_deletes_files_it_did_not_write(tmp_path, data_root):
    """A rerun deleted an image the user added to the YOLO set, a first run the images already in
    OUT/train/images, and the images of a folder OUT/train/images linked to."""
    cfg = config_file(tmp_path, data_root, tmp_path / "work")
    out_dir = tmp_path / "yolo"
    assert cli("data", "to-yolo", cfg, out_dir)[0] == 0
    added = out_dir / "train" / "images" / "my_extra_photo.jpg"
    added.write_bytes((data_root / "val" / "images" / "000001.jpg").read_bytes())
    (out_dir / "train" / "labels" / "my_extra_photo.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    before = hashes(out_dir)
    one_error_line(*cli("data", "to-yolo", cfg, out_dir), str(added), "was not written by nasdet data to-yolo")
    assert hashes(out_dir) == before

    first = frames(tmp_path / "frames" / "train" / "images")
    before = hashes(first)
    one_error_line(*cli("data", "to-yolo", cfg, tmp_path / "frames"), str(first / "000001.jpg"), "(and 1 more)")
    assert hashes(first) == before and not (tmp_path / "frames" / "data.yaml").exists()

    mine = frames(tmp_path / "holiday", ["holiday_1.jpg"])
    (tmp_path / "linked" / "train").mkdir(parents=True)
    (tmp_path / "linked" / "train" / "images").symlink_to(mine)
    one_error_line(*cli("data", "to-yolo", cfg, tmp_path / "linked"), str(tmp_path / "linked" / "train" / "images"),
                   "is a link")
    assert sorted(p.name for p in mine.iterdir()) == ["holiday_1.jpg"]


def test_to_yolo_killed_run_is_rerun_and_replaces_its_own_files(tmp_path, data_root, monkeypatch):
    """The record lists a run's files before the first is written: the rerun after a kill claims them."""
    import nasdet.data.yolo as yolo

    cfg = config_file(tmp_path, data_root, tmp_path / "work")
    written = []

    def killed_after_two(rec):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(rec)
        return real(rec)

    real = yolo._label_lines
    monkeypatch.setattr(yolo, "_label_lines", killed_after_two)
    code, out, _ = cli("data", "to-yolo", cfg, tmp_path / "yolo")  # the interrupt, as click ends on one
    assert code == 130 and len(written) == 2 and not (tmp_path / "yolo" / "data.yaml").exists(), out
    monkeypatch.setattr(yolo, "_label_lines", real)
    code, out, exc = cli("data", "to-yolo", cfg, tmp_path / "yolo")
    assert code == 0 and exc is None, out
    assert len(yolo.load_yolo(tmp_path / "yolo" / "data.yaml", "train")) == 4


def test_to_yolo_says_its_images_are_hard_links_and_copies_them_with_copy(tmp_path, data_root):
    cfg = config_file(tmp_path, data_root, tmp_path / "work")
    original = data_root / "train" / "images" / "000001.jpg"
    code, out, exc = cli("data", "to-yolo", cfg, tmp_path / "linked")
    assert code == 0 and exc is None, out
    assert (tmp_path / "linked" / "train" / "images" / "000001.jpg").stat().st_ino == original.stat().st_ino
    assert "hard-linked to the originals" in " ".join(out.split()) and "--copy" in out.strip().splitlines()[-1]
    code, out, exc = cli("data", "to-yolo", cfg, tmp_path / "copied", "--copy")
    assert code == 0 and exc is None, out
    assert (tmp_path / "copied" / "train" / "images" / "000001.jpg").stat().st_ino != original.stat().st_ino
    assert "hard-linked" not in out


@pytest.mark.parametrize("data_format", ["coco", "imagefolder"])
def test_make_synthetic_never_writes_over_images_it_did_not_write(tmp_path, data_format):
    """--format imagefolder skipped every check: it added class folders into a COCO set and replaced a user's
    ImageFolder train/circle/000001.jpg; --format coco replaced unlabelled frames in OUT/train/images."""
    args = ("--train", 8, "--val", 8, "--size", 32, "--workers", 1, "--format", data_format)
    users = {"frames": frames(tmp_path / "frames" / "train" / "images").parent.parent,
             "imagefolder": frames(tmp_path / "imf" / "train" / "circle").parent.parent,
             "one_class": frames(tmp_path / "one" / "train" / "dog").parent.parent}
    user_coco = tmp_path / "coco"
    assert cli("data", "make-synthetic", user_coco, "--train", 2, "--val", 1, "--size", 32, "--workers", 1)[0] == 0
    ann = user_coco / "train" / "annotations.json"
    ann.write_text(ann.read_text().replace("nasdet synthetic shapes", "my labelled set"))
    users["coco"] = user_coco
    for name, folder in users.items():
        before = hashes(folder)
        one_error_line(*cli("data", "make-synthetic", folder, *args), str(folder))
        assert hashes(folder) == before, name


@pytest.mark.parametrize("data_format", ["coco", "imagefolder"])
def test_make_synthetic_reruns_into_its_own_folder_after_a_kill_and_drops_its_stale_images(tmp_path, data_format):
    from nasdet.data.synthetic import make_synthetic
    from nasdet.data.synthetic_classes import make_synthetic_imagefolder

    make = {"coco": lambda n, **kw: make_synthetic(tmp_path / "s", n, 2, 32, workers=1, **kw),
            "imagefolder": lambda n, **kw: make_synthetic_imagefolder(tmp_path / "s", n, 8, 32, **kw)}[data_format]

    def killed(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make(12, progress=killed)
    make(10)
    make(9)  # fewer: the earlier run's 10th image goes
    images = sorted(p.name for p in (tmp_path / "s" / "train").rglob("*.jpg"))
    assert len(images) == 9 and "000010.jpg" not in images


def test_an_output_inside_a_data_set_is_refused_found_from_its_ancestors(tmp_path, data_root):
    """make-synthetic OUT inside a user's image folder (a YOLO loader globs it recursively: the synthetic images
    joined the training set), to-yolo OUT inside a COCO split folder, either inside an ImageFolder split."""
    cfg = config_file(tmp_path, data_root, tmp_path / "work")
    user = user_yolo_set(tmp_path / "uyo")
    imf = frames(tmp_path / "imf" / "train" / "circle").parent
    frames(imf / "square")
    before = {f: hashes(f) for f in (user, data_root, imf)}
    cases = [("make-synthetic", user / "train" / "images" / "more", "folder of images"),
             ("make-synthetic", user / "train" / "images", "is a folder of images"),
             ("make-synthetic", imf / "more", "data set folder"),
             ("make-synthetic", user / "train" / "more" / "deeper", "data set folder"),
             ("to-yolo", data_root / "train" / "w", "annotations.json"),
             ("to-yolo", imf / "more", "data set folder")]
    for command, out, needle in cases:
        args = (cfg, out) if command == "to-yolo" else (out, "--train", 8, "--val", 8, "--size", 32, "--workers", 1)
        one_error_line(*cli("data", command, *args), str(out), needle)
        for fmt in (("--format", "imagefolder"),) if command == "make-synthetic" else ():
            one_error_line(*cli("data", command, *args, *fmt), str(out), needle)
    assert {f: hashes(f) for f in before} == before
    # an ordinary output beside a project's data.yaml, README and a picture is not a data set's
    project = tmp_path / "project"
    project.mkdir()
    for name in ("data.yaml", "README.md", "banner.png"):
        (project / name).write_bytes(b"x")
    assert cli("data", "make-synthetic", project / "runs" / "s", "--train", 1, "--val", 1, "--size", 32)[0] == 0
    assert cli("data", "to-yolo", cfg, project / "runs" / "yolo")[0] == 0
