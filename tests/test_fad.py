"""FAD: representation-sharing ops, genotypes, heads and the bi-level DARTS search."""
import json

import pytest
import torch
from torchvision.models.detection.fcos import FCOSHead

from nasdet.config import HeadConfig, validate_config
from nasdet.data.dataset import collate_detection
from nasdet.models import build_detector
from nasdet.models.heads.fad import (ALPHA_COLUMNS, OP_NAMES, OTHER_GOOD_GENOTYPES, PUBLISHED_GENOTYPES, FADFCOSHead, FADTowers,
                                     Genotype, GenotypeError, MixedOp, SharedOps, fad_towers, build_op,
                                     derive_genotype, format_genotype, parse_genotype, read_genotypes, write_genotypes)
from nasdet.search.darts import Bilevel, DartsSearch
from nasdet.train.checkpoint import CheckpointError, load_checkpoint



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small convs: one thread is faster than two on a shared 2-core machine (no spinning OpenMP workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PAPER_BOX = ("Genotype(normal=[[('sinSep_conv_3x3_x3', 0), ('std_conv_3x3_x3', 1)], [('std_conv_3x3', 2), "
             "('sinSep_conv_3x3+dil_conv_3x3', 1)], [('sinSep_conv_3x3_x2', 2), ('std_conv_3x3_x2', 3)]], "
             "normal_concat=range(2, 5))")


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _randomize_norms(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(torch.rand(m.num_channels, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_channels, generator=g) - 0.5)
    return module


def _tied_op(shared: SharedOps, name: str) -> torch.nn.Sequential:
    """``build_op(name)`` with its weights copied from the shared trunk and branches."""
    op = build_op(name, shared.trunk[0][0].out_channels)
    depth = int(name.split("_x")[1][0]) if "_x" in name else 1
    blocks = list(shared.trunk[:depth]) + ([shared.dilated[depth - 1]] if "dil" in name else [])
    for dst, src in zip(op, blocks, strict=True):
        dst.load_state_dict(src.state_dict())
    return op


# ------------------------------------------------------------------------------------------------ ops
@pytest.mark.parametrize("kind", ["std", "sinSep"])
def test_shared_trunk_equals_the_five_separate_ops_with_tied_weights(kind):
    torch.manual_seed(0)
    x = torch.randn(2, 32, 12, 12)
    names = [n for n in OP_NAMES if n.startswith(kind + "_")]
    shared = _randomize_norms(SharedOps(kind, 32, decouple=False))
    for out, name in zip(shared(x), names, strict=True):
        assert torch.allclose(out, _tied_op(shared, name)(x), atol=1e-6), name
    # FAD's search-time decouple 1x1 sits on the x1 and x2 outputs only
    dec = _randomize_norms(SharedOps(kind, 32, decouple=True), seed=1)
    outs = dec(x)
    assert torch.allclose(outs[0], dec.decouple[0](_tied_op(dec, names[0])(x)), atol=1e-6)
    assert torch.allclose(outs[2], dec.decouple[1](_tied_op(dec, names[2])(x)), atol=1e-6)
    assert torch.allclose(outs[4], _tied_op(dec, names[4])(x), atol=1e-6)


def test_mixed_op_shared_equals_separate_and_skips_none():
    torch.manual_seed(0)
    shared = _randomize_norms(MixedOp(32, shared=True, decouple=False))
    separate = MixedOp(32, shared=False)
    for i, name in enumerate(OP_NAMES):
        separate.ops[i].load_state_dict(_tied_op(shared.ops[i // 5], name).state_dict())
    x, w = torch.randn(2, 32, 10, 10), torch.randn(len(ALPHA_COLUMNS)).softmax(0)
    assert torch.allclose(shared(x, w), separate(x, w), atol=1e-5)
    only_none = torch.zeros(len(ALPHA_COLUMNS))
    only_none[-1] = 1.0
    assert torch.count_nonzero(shared(x, only_none)) == 0


# ------------------------------------------------------------------------------------------ genotypes
def test_derivation_rule_on_hand_set_alphas():
    a = [torch.zeros(2, 11), torch.zeros(3, 11), torch.zeros(4, 11)]
    a[0][0, 10] = 9.0  # 'none' is never chosen, however large
    a[0][0, 3] = 1.0
    a[0][1, 7] = 2.0
    a[1][0, 0], a[1][1, 9], a[1][2, 4] = 0.5, 3.0, 1.5  # edge 0 is the weakest: dropped
    a[1][0, 10] = 5.0
    a[2][0, 2], a[2][1, 2], a[2][2, 6], a[2][3, 1] = 0.1, 0.2, 0.9, 0.8
    a[2][2, 5] = 0.85  # second best op of edge 2 does not matter
    g = derive_genotype(a)
    assert g.normal == [[("sinSep_conv_3x3_x2", 1), ("std_conv_3x3_x2+dil_conv_3x3", 0)],
                        [("sinSep_conv_3x3_x3", 1), ("std_conv_3x3_x3", 2)],
                        [("sinSep_conv_3x3+dil_conv_3x3", 2), ("std_conv_3x3+dil_conv_3x3", 3)]]
    assert g.normal_concat == [2, 3, 4]


def test_genotype_round_trip_and_published_genotypes(tmp_path):
    box, cls = PUBLISHED_GENOTYPES["fad_paper"]
    assert format_genotype(box) == PAPER_BOX  # FAD's README text, character for character
    for g in (box, cls, *OTHER_GOOD_GENOTYPES):
        assert parse_genotype(format_genotype(g)) == g
    files = write_genotypes(tmp_path, box, cls)
    assert (tmp_path / "genotype.log").read_text().splitlines() == [format_genotype(box), format_genotype(cls)]
    assert read_genotypes(files["genotype.log"]) == (box, cls) == read_genotypes(files["genotype.json"])
    assert json.loads(files["genotype.json"].read_text())["box"]["normal"][0] == [["sinSep_conv_3x3_x3", 0],
                                                                                 ["std_conv_3x3_x3", 1]]
    edited = json.loads(files["genotype.json"].read_text())  # a user edits the FAD-format line only
    edited["box_text"] = edited["box_text"].replace("('std_conv_3x3', 2)", "('std_conv_3x3_x2', 2)", 1)
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(GenotypeError, match=r"edited.json: 'box_text' and 'box' give two different box genotypes"):
        read_genotypes(tmp_path / "edited.json")
    del edited["box_text"]  # the structured form alone (or with agreeing text) is the genotype
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    assert read_genotypes(tmp_path / "edited.json") == (box, cls)
    for g in OTHER_GOOD_GENOTYPES:  # the README's other architectures build too
        towers = FADTowers(64, 32, 2, (g, g))
        box_f, cls_f = towers(torch.randn(1, 64, 8, 8))
        assert box_f.shape == cls_f.shape == (1, 64, 8, 8)


@pytest.mark.parametrize("text, match", [
    ("Genotype(normal=[[('sep_conv_5x5', 0), ('std_conv_3x3', 1)]], normal_concat=range(2, 3))", "unknown op 'sep_conv_5x5'"),
    ("Genotype(normal=[[('std_conv_3x3', 0), ('std_conv_3x3', 2)]], normal_concat=range(2, 3))", "input index 2"),
    ("Genotype(normal=[[('std_conv_3x3', 0)], [('none', 1)]], normal_concat=range(2, 4))", "'none'"),
    ("Genotype(normal=[[('std_conv_3x3', 0)]], normal_concat=range(2, 4))", "normal_concat"),
    ("__import__('os').system('true')", "expected Genotype"),
])
def test_bad_genotype_is_an_error_naming_it(text, match):
    with pytest.raises(GenotypeError, match=match):
        parse_genotype(text)


def test_bad_genotype_file_fails_when_the_detector_is_built(tmp_path):
    bad = Genotype([[("std_conv_3x3", 0), ("dil_conv_5x5", 1)]], [2])
    (tmp_path / "genotype.json").write_text(json.dumps({"box": {"normal": bad.normal, "normal_concat": [2]},
                                                         "cls": {"normal": bad.normal, "normal_concat": [2]}}))
    with pytest.raises(GenotypeError, match=r"box.*node 0.*unknown op 'dil_conv_5x5'"):
        read_genotypes(tmp_path / "genotype.json")
    (tmp_path / "one.log").write_text(PAPER_BOX + "\n")
    with pytest.raises(GenotypeError, match="expected 2 genotype lines"):
        read_genotypes(tmp_path / "one.log")


# ----------------------------------------------------------------------------------------------- heads
def test_published_genotypes_give_a_smaller_fcos_head_than_the_standard_one():
    fad = FADFCOSHead(fad_towers(256, HeadConfig(genotype="fad_paper", cell_channels=96, num_cells=2)), 256, 81)
    standard = FCOSHead(256, 1, 81)  # 4 conv 256 + GN per tower, 80 classes + background as nasdet builds it
    assert n_params(fad) < n_params(standard)
    assert abs(n_params(fad) - 4.17e6) < 0.02e6 and abs(n_params(standard) - 4.92e6) < 0.02e6
    search = FADFCOSHead(fad_towers(256, HeadConfig(), search=True), 256, 81)  # 1 cell, 3 nodes, C = 96
    assert abs(n_params(search.towers.box_tower) + n_params(search.towers.cls_tower) - 7.356e6) < 0.001e6


@pytest.mark.parametrize("detector", ["fcos", "retinanet"])
def test_detectors_with_fad_heads_train_and_detect(tiny_config, detector):
    with pytest.raises(ValueError, match="GroupNorm"):  # P7 is 1x1 at 96 px: one value per group
        tiny_config(detector, model={"head": {"genotype": "fad_paper", "cell_channels": 32, "num_cells": 1}})
    # the same towers from a search (no genotype yet): refused before the search, not by a traceback at export
    with pytest.raises(ValueError, match=r"model.head.cell_channels 32 with model.input_size 96: the searched towers' "
                                         r"GroupNorm\(32\) on the 1x1 P7 map"):
        tiny_config(detector, model={"head": {"cell_channels": 32}}, search={"strategy": "darts"})
    cfg = tiny_config(detector, model={"head": {"genotype": "fad_paper", "cell_channels": 64, "num_cells": 1}})
    model = build_detector(cfg.model, num_classes=3)
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 5.0, 90.0, 40.0]]), "labels": torch.tensor([3])}]
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.towers.cls_tower.cells[0].edges[0][0][1][0][0].weight.grad is not None
    out = model.eval()(images)
    assert set(out[0]) == {"boxes", "scores", "labels"}
    with pytest.raises(ValueError, match="fcos or retinanet"):
        build_detector(tiny_config("ssdlite", model={"head": {"genotype": "fad_paper"}}).model, num_classes=3)


# ---------------------------------------------------------------------------------------------- search
def darts_config(tiny_config, data=None, **darts):
    return tiny_config("fcos", model={"head": {"cell_channels": 64}}, **({"data": data} if data else {}),
                       search={"strategy": "darts", "darts": {"epochs": 2, "batch_size": 4, "lr": 0.01,
                                                              "scheduler": {"name": "constant", "warmup_steps": 0},
                                                              "log_every_steps": 1, **darts}})


def test_search_step_moves_alphas_with_adam_and_weights_with_sgd_on_different_data(tiny_config, tmp_path):
    s = DartsSearch.from_config(darts_config(tiny_config, grad_clip=None), tmp_path / "work")
    w_ids = {r.image_id for r in s.weight_set.records}
    a_ids = {r.image_id for r in s.arch_set.records}
    assert w_ids and a_ids and not w_ids & a_ids
    # as a trainer: both halves resized to the search net's input size before the colour ops, NHWC weights
    assert s.weight_set.transforms.size == s.arch_set.transforms.size == 96
    assert s.weight_set[0][0].shape[-2:] == (96, 96)
    conv = next(m for m in s.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    alphas = s.towers.arch_parameters()
    assert isinstance(s.w_optim, torch.optim.SGD) and isinstance(s.a_optim, torch.optim.Adam)
    g = s.a_optim.param_groups[0]
    assert (g["lr"], g["betas"], g["weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)
    in_sgd = {id(p) for group in s.w_optim.param_groups for p in group["params"]}
    assert not in_sgd & {id(a) for a in alphas} and len(alphas) == 6
    assert {id(p) for p in s.model.parameters()} == in_sgd | {id(a) for a in alphas}

    wb = collate_detection([s.weight_set.with_transforms(None)[i] for i in range(4)])
    ab = collate_detection([s.arch_set.with_transforms(None)[i] for i in range(4)])
    s.model.train()
    s.bilevel.weight_step(wb)  # weights differ from their initial copy from now on

    def grads_on(batch, params):
        return torch.autograd.grad(sum(s.bilevel.loss_fn(batch).values()), params, allow_unused=True)

    expected = grads_on(ab, alphas)  # at the live weights, on the arch batch
    on_weight_batch = grads_on(wb, alphas)
    weights_before = [p.detach().clone() for p in s.bilevel.weights]
    alphas_before = [a.detach().clone() for a in alphas]
    s.bilevel.arch_step(ab)
    for a, e, w, before in zip(alphas, expected, on_weight_batch, alphas_before):
        assert torch.allclose(a.grad, e, rtol=1e-4, atol=1e-9) and not torch.allclose(a.grad, w, rtol=1e-2)
        step = (a.detach() - before).abs()
        assert step.max() <= 3.1e-4 and step.max() > 2.5e-4  # Adam's first step: about lr per coordinate
    assert all(torch.equal(p, b) for p, b in zip(s.bilevel.weights, weights_before))

    head_w = s.towers.box_tower.cells[0].edges[0][0].reduce.weight
    expected_w = grads_on(wb, [head_w])[0]
    alphas_now = [a.detach().clone() for a in alphas]
    s.bilevel.weight_step(wb)
    assert torch.allclose(head_w.grad, expected_w, rtol=1e-4, atol=1e-9)
    assert not torch.equal(head_w.detach(), weights_before[[id(p) for p in s.bilevel.weights].index(id(head_w))])
    assert all(torch.equal(a, b) for a, b in zip(alphas, alphas_now))


def test_second_order_gradient_matches_the_exact_unrolled_gradient():
    """On L(w, a) quadratic in w, the central difference is exact: the result must equal autograd's
    gradient through the virtual SGD step (momentum and weight decay included)."""
    torch.manual_seed(0)
    dt = torch.float64
    A, B = torch.randn(6, 5, dtype=dt), torch.randn(6, 3, dtype=dt)
    w = torch.nn.Parameter(torch.randn(5, dtype=dt))
    a = torch.nn.Parameter(torch.randn(3, dtype=dt))

    def loss_at(wv, av, batch):
        c = batch
        return ((A @ wv - B @ av.tanh() - c) ** 2).sum() + (wv ** 2 * av[0].exp()).sum()

    def loss_fn(batch):
        return {"loss": loss_at(w, a, batch)}

    trn, val = torch.randn(6, dtype=dt), torch.randn(6, dtype=dt)
    w_optim = torch.optim.SGD([w], lr=0.05, momentum=0.9, weight_decay=0.1)
    a_optim = torch.optim.Adam([a], lr=3e-4)
    loss_fn(trn)["loss"].backward()
    w_optim.step()  # a momentum buffer exists now
    buf = w_optim.state[w]["momentum_buffer"].clone()
    bilevel = Bilevel(loss_fn, [w], [a], w_optim, a_optim, order="second")
    _, (got,) = bilevel.unrolled_alpha_grads(trn, val)

    av = a.detach().clone().requires_grad_(True)
    wv = w.detach().clone()
    g = torch.autograd.grad(loss_at(wv.requires_grad_(True), av, trn), wv, create_graph=True)[0]
    w_unrolled = wv - 0.05 * (0.9 * buf + g + 0.1 * wv)
    exact = torch.autograd.grad(loss_at(w_unrolled, av, val), av)[0]
    assert torch.allclose(got, exact, rtol=1e-6, atol=1e-9), (got, exact)
    assert torch.equal(w.detach(), wv.detach())  # the weights are restored


def test_tiny_darts_search_through_the_python_api_and_resume(tiny_config, tmp_path):
    """... and a search stopped mid-epoch, then rerun, gives the uninterrupted one's weights and alphas, with
    augmentation on (its loaders drew their iterators' seeds from the global stream, at the epoch's start or where
    the resumed search started: every later image was augmented otherwise, and other genotypes were found)."""
    from nasdet.stages.search import run_search

    augment = {"hflip": 0.5, "photometric": 0.0}  # (a random flip draws from the stream as the colour ops do)
    cfg = darts_config(tiny_config, data={"augment": augment})
    summary = run_search(cfg)
    out = tmp_path / "work" / "search"
    box, cls = read_genotypes(out / "genotype.log")
    assert read_genotypes(out / "genotype.json") == (box, cls)
    assert summary["genotypes"] == {"box": format_genotype(box), "cls": format_genotype(cls)}
    records = [json.loads(line) for line in (out / "alphas.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["genotype"]["cls"] == format_genotype(cls)
    assert len(records[0]["alphas"]["box"][2]) == 4 and records[0]["columns"][-1] == "none"
    state = torch.load(out / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == summary["step"] == 4 and state["epoch"] == 2
    assert any("alpha_box" in k for k in state["model"])

    # a rerun finds the search complete; the genotype trains as a standalone FCOS head
    assert run_search(cfg)["genotypes"] == summary["genotypes"]
    assert load_checkpoint(out / "ckpt" / "last.pt")["step"] == 4
    trained = tiny_config("fcos", model={"head": {"genotype": str(out / "genotype.json"), "cell_channels": 64}})
    model = build_detector(trained.model, num_classes=3)
    assert not [n for n, _ in model.named_parameters() if "alpha" in n]

    # stopped after step 3 (mid-epoch), then rerun: the same weights and alphas as the uninterrupted search
    cut = tmp_path / "cut"
    stopped = run_search(darts_config(tiny_config, data={"augment": augment}, max_steps=3), work_dir=cut)
    assert stopped["step"] == 3
    resumed = run_search(cfg, work_dir=cut)
    assert resumed["step"] == 4 and resumed["genotypes"] == summary["genotypes"]
    res = load_checkpoint(cut / "search" / "ckpt" / "last.pt")["model"]
    for k, v in state["model"].items():
        assert torch.allclose(v, res[k], atol=1e-6), k
    epochs = [json.loads(line)["epoch"] for line in (cut / "search" / "alphas.jsonl").read_text().splitlines()]
    assert epochs == [1, 1, 2]  # epoch 1, the partial record at step 3, then epoch 2


def test_a_darts_search_refuses_a_storage_it_would_not_use(tiny_config, tmp_path):
    """`nasdet search --storage URL` ran the DARTS search and wrote no study, without a word."""
    from nasdet.errors import ConfigError
    from nasdet.stages.search import run_search

    with pytest.raises(ConfigError, match=r"--storage .*x\.journal: search.strategy darts \(FAD\) keeps no Optuna "
                                          r"study .* drop --storage"):
        run_search(darts_config(tiny_config), storage=str(tmp_path / "x.journal"))
    assert not (tmp_path / "work" / "search").exists()


def test_a_darts_search_stopped_before_its_first_checkpoint_logs_each_step_once(tiny_config, tmp_path):
    """The rerun started afresh and kept the stopped search's lines (step 1 twice in log.jsonl)."""
    from nasdet.stages.search import run_search

    out = tmp_path / "work" / "search"
    out.mkdir(parents=True)
    (out / "log.jsonl").write_text(json.dumps({"step": 1, "epoch": 0, "loss": 9.0}) + "\n")
    (out / "alphas.jsonl").write_text(json.dumps({"epoch": 1, "step": 2}) + "\n")
    run_search(darts_config(tiny_config, data={"augment": {"hflip": 0.0, "photometric": 0.0}}, max_steps=2))
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert [json.loads(line)["epoch"] for line in (out / "alphas.jsonl").read_text().splitlines()] == [1]


def test_a_signal_stops_the_darts_search_after_the_step_it_interrupts_and_saves_it(tiny_config, tmp_path,
                                                                                  monkeypatch, capsys):
    """Ctrl-C or a scheduler's SIGTERM stopped the search with nothing saved since the last ckpt_every_steps (500
    in FAD's recipe) and nothing said; the step under way now ends, last.pt is saved at it, and the rerun gives
    where it stopped (the rerun's exactness is the resume test's)."""
    import os
    import signal

    from nasdet.search import darts
    from nasdet.stages.search import run_search

    cfg = darts_config(tiny_config, data={"augment": {"hflip": 0.0, "photometric": 0.0}}, max_steps=3)
    real, calls = darts.Bilevel.step, []

    def signalled_at_the_second(self, *args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during the step
        return real(self, *args)

    monkeypatch.setattr(darts.Bilevel, "step", signalled_at_the_second)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, work_dir=cut)
    assert "SIGTERM: stopped after step 2, saved in" in " ".join(capsys.readouterr().out.split())
    assert load_checkpoint(cut / "search" / "ckpt" / "last.pt")["step"] == 2
    monkeypatch.setattr(darts.Bilevel, "step", real)
    assert run_search(cfg, work_dir=cut)["step"] == 3
    assert "resumed at step 2" in " ".join(capsys.readouterr().out.split())


def test_darts_pipeline_trains_the_searched_head_against_the_standard_one_and_exports(tiny_config, tmp_path):
    """With search.strategy darts: baseline (standard FCOS head) -> search (no supernet) -> tune (the
    searched towers, genotypes stored in the checkpoint) -> export -> report."""
    from nasdet.pipeline import run_pipeline
    from nasdet.errors import StageOutputMissing
    from nasdet.stages.tune import run_tune

    cfg = darts_config(tiny_config, epochs=1, data={"augment": {"hflip": 0.0, "photometric": 0.0}})
    cfg.model.head.cell_channels = 64  # 2 channels per GroupNorm group: P7 is 1x1 at 96 px
    cfg.model.head.num_cells = 1  # the trained towers of one cell each (FAD's 2 take twice as long to export)
    with pytest.raises(StageOutputMissing, match="genotype.json does not exist"):
        run_tune(cfg)
    raw = cfg.model_dump()
    raw["train"].update(epochs=1, max_steps=2)
    raw["export"] = {"check_images": 2}
    cfg = validate_config(raw, "darts pipeline")
    report = run_pipeline(cfg)
    wd = tmp_path / "work"
    assert not (wd / "supernet").exists()
    tuned = json.loads((wd / "tune" / "metrics.json").read_text())
    box, cls = read_genotypes(wd / "search" / "genotype.json")
    assert read_genotypes(tuned["genotype"]) == (box, cls) and tuned["step"] == 2
    state = load_checkpoint(wd / "tune" / "ckpt" / "last.pt")
    assert read_genotypes(state["config"]["model"]["head"]["genotype"]) == (box, cls)  # rebuilds without the search
    assert any("towers.box_tower" in k for k in state["model"])
    base = load_checkpoint(wd / "baseline" / "ckpt" / "last.pt")
    assert not any("towers" in k for k in base["model"])  # the baseline keeps torchvision's standard head
    assert [r["model"] for r in report["rows"]] == ["baseline (mobilenet_v3_small)", "found arch (tune from scratch)"]
    assert (wd / "export" / "tune.onnx").is_file()
    # report.md says what was searched and found, and no supernet (it named the backbone as the search space, a
    # supernet start, supernet/ and the study's files, and never the genotypes)
    md = " ".join((wd / "report.md").read_text().split())
    assert "search space FAD's fcos head (box and cls towers of 1 cell(s) of 3 nodes, C = 64" in md
    assert "supernet" not in md and "study.journal" not in md and report["supernet"] is None
    assert f"Found head (tune/arch.json): box tower {format_genotype(box)}; cls tower {format_genotype(cls)}." in md
    assert "`search/` (genotype.log, genotype.json, alphas.jsonl" in md
    # another genotype for a finished tune folder is refused, not silently mixed
    with pytest.raises(CheckpointError, match="other genotypes"):
        run_tune(validate_config({**raw, "tune": {"arch": "fad_paper"}}, "other"))


def test_genotypes_are_an_arch_the_tune_stage_trains_stores_and_reloads(tiny_config, tmp_path):
    """After a darts search the tune stage takes the genotypes as an arch ({"head.genotype": ..}): given inline,
    they go into tune/arch.json and every checkpoint like a subnet's arch, and load_tuned_model rebuilds the
    model from that arch; a mapping of subnet choices is refused by name."""
    from nasdet.models.heads.fad import GENOTYPE_KEY, genotype_arch
    from nasdet.space import ArchError
    from nasdet.train.trained import load_tuned_model
    from nasdet.stages.tune import run_tune

    arch = genotype_arch("fad_paper")
    assert set(arch) == {GENOTYPE_KEY} and read_genotypes(arch[GENOTYPE_KEY]) == read_genotypes("fad_paper")
    raw = darts_config(tiny_config, data={"augment": {"hflip": 0.0, "photometric": 0.0}}).model_dump()
    raw["model"]["head"]["cell_channels"] = 64
    raw["train"].update(epochs=1, max_steps=1)
    with pytest.raises(ArchError, match="names genotypes"):
        run_tune(validate_config({**raw, "tune": {"arch": {"backbone.stage1.depth": 2}}}, "subnet choices"))
    with pytest.raises(GenotypeError, match=r"tune.arch head.genotype: expected an object with 'box' and 'cls'"):
        run_tune(validate_config({**raw, "tune": {"arch": {GENOTYPE_KEY: {"box": arch[GENOTYPE_KEY]["box"]}}}}, "no cls"))
    cfg = validate_config({**raw, "tune": {"arch": arch, "init": "scratch"}}, "inline genotypes")
    result = run_tune(cfg)
    tune = tmp_path / "work" / "tune"
    assert result["arch"] == arch and result["arch_source"] == "tune.arch (inline)" and result["step"] == 1
    assert json.loads((tune / "arch.json").read_text())["arch"] == arch
    state = load_checkpoint(tune / "ckpt" / "last.pt")
    assert state["extra"]["arch"] == arch
    # the head rebuilds from the checkpoint alone, as its genotypes do (eval / export with another config's
    # cell_channels / num_cells were refused with a hint naming the backbone)
    other = validate_config({**raw, "model": {**raw["model"], "score_thresh": 0.3,
                                             "head": {**raw["model"]["head"], "cell_channels": 128, "num_cells": 2}}}, "other")
    for run_cfg in (cfg, other):
        model, loaded = load_tuned_model(tune / "ckpt" / "last.pt", run_cfg, 8)  # the tiny set's classes
        assert loaded == arch and any("towers.box_tower" in k for k in model.state_dict())
        for k, v in model.state_dict().items():
            assert torch.equal(v, state["model"][k]), k
    assert model.score_thresh == 0.3  # the run's post-processing


def test_darts_search_says_and_records_its_backbones_start(tiny_config, tmp_path):
    """FAD's darts search from a backbone checkpoint (or ImageNet weights) logged "from scratch"."""
    import io

    from rich.console import Console

    from nasdet.models.backbones import build_backbone

    src = tmp_path / "backbone.pt"
    torch.save({"model": build_backbone(tiny_config().model.backbone).state_dict()}, src)
    cfg = darts_config(tiny_config, max_steps=1, batch_size=2, epochs=1)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"input_size": 64,
        "backbone": cfg.model.backbone.model_copy(update={"checkpoint": str(src)})})})
    console = Console(file=io.StringIO(), width=400)
    summary = DartsSearch.from_config(cfg, tmp_path / "work", console).run()
    assert f"on cpu, backbone from {src}" in " ".join(console.file.getvalue().split())
    assert summary["start"] == f"backbone from {src}"
    assert load_checkpoint(tmp_path / "work" / "search" / "ckpt" / "last.pt")["start"] == f"backbone from {src}"
