"""search.strategy gradient (ENOT's search): expected cost and its gradient, REINFORCE, hard limit, the run."""
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import fake_pretrain
from nasdet.search.gradient import (ArchLogits, CostTable, LimitBelowSmallest, limit_penalty, project_under_limit,
                                    reinforce_surrogate)
from nasdet.space import SearchSpace

SPACE = SearchSpace({"a.width": (0.0, 0.5, 1.0), "b.width": (0.25, 1.0), "c.kernel": (3, 5, 7)},
                    default={"a.width": 1.0, "b.width": 1.0, "c.kernel": 3})
NAMES = SPACE.names


def additive_cost(arch) -> float:
    return 100 + 40 * arch["a.width"] + 25 * arch["b.width"] + {3: 0.0, 5: 6.0, 7: 15.0}[arch["c.kernel"]]


def logits_with(values) -> ArchLogits:
    logits = ArchLogits(SPACE, NAMES)
    with torch.no_grad():
        for p, v in zip(logits.logits, values):
            p.copy_(torch.tensor(v))
    return logits


VALUES = ([0.3, -0.2, 0.5], [1.0, -0.4], [-0.1, 0.2, 0.7])


def test_expected_cost_is_exact_for_additive_costs_and_its_gradient_matches_closed_form_and_fd():
    table = CostTable(additive_cost, SPACE, SPACE.default(), NAMES)
    logits = logits_with(VALUES)
    probs = [p.detach() for p in logits.probs()]
    brute = sum(math.prod(float(probs[i][SPACE[n].index(a[n])]) for i, n in enumerate(NAMES)) * additive_cost(a)
                for a in (dict(zip(NAMES, vs)) for vs in itertools.product(*(SPACE[n] for n in NAMES))))
    expected = table.expected(logits)
    assert float(expected.detach()) == pytest.approx(brute, rel=1e-6)
    assert table.predict({"a.width": 0.5, "b.width": 0.25, "c.kernel": 7}) == pytest.approx(
        additive_cost({"a.width": 0.5, "b.width": 0.25, "c.kernel": 7}))
    expected.backward()
    for n, t, p in zip(NAMES, logits.logits, probs):
        c = table.deltas[n].float()
        closed = p * (c - (p * c).sum())  # d/d theta_k of sum_j softmax_j c_j
        assert torch.allclose(t.grad, closed, atol=1e-6)
        for k in range(len(t)):  # central finite differences
            with torch.no_grad():
                t[k] += 1e-3
                up = float(table.expected(logits))
                t[k] -= 2e-3
                down = float(table.expected(logits))
                t[k] += 1e-3
            assert (up - down) / 2e-3 == pytest.approx(float(t.grad[k]), rel=1e-3, abs=1e-3)


def test_limit_penalty_switches_on_above_the_limit():
    x = torch.tensor([90.0, 100.0, 120.0], requires_grad=True)
    pen = limit_penalty(x, 100.0, 10.0)
    assert pen.tolist() == pytest.approx([0.0, 0.0, 2.0])
    pen.sum().backward()
    assert x.grad.tolist() == pytest.approx([0.0, 0.0, 0.1])


def test_reinforce_surrogate_gradient_is_advantage_times_score():
    logits = logits_with(VALUES)
    archs = [{"a.width": 0.0, "b.width": 1.0, "c.kernel": 5}, {"a.width": 1.0, "b.width": 1.0, "c.kernel": 3}]
    losses = [2.0, 1.5]  # leave-one-out advantages: +0.5 and -0.5
    reinforce_surrogate(losses, [logits.log_prob(a) for a in archs], None).backward()
    probs = [p.detach() for p in logits.probs()]
    want = [torch.zeros_like(p) for p in probs]
    for adv, a in zip((0.5, -0.5), archs):
        for i, n in enumerate(NAMES):
            onehot = torch.zeros_like(probs[i])
            onehot[SPACE[n].index(a[n])] = 1
            want[i] += adv * (onehot - probs[i]) / 2
    for t, w in zip(logits.logits, want):
        assert torch.allclose(t.grad, w, atol=1e-6)
    # one sample: the moving-average baseline
    logits.zero_grad()
    reinforce_surrogate([2.0], [logits.log_prob(archs[0])], 1.0).backward()
    assert float(logits.logits[0].grad[0]) == pytest.approx(1.0 * (1 - float(probs[0][0])))


def test_projection_brings_the_most_probable_arch_under_the_limit_at_least_probability_cost():
    table = CostTable(additive_cost, SPACE, SPACE.default(), NAMES)
    # a.width strongly wants 1.0, b.width is nearly indifferent: lowering b is cheap in probability
    logits = logits_with(([-3.0, -3.0, 3.0], [0.0, 0.1], [3.0, 0.0, 0.0]))
    best = logits.most_probable()
    assert additive_cost(best) == 165
    arch, moves = project_under_limit(best, logits, table, additive_cost, 150.0, SPACE.smallest())
    assert additive_cost(arch) <= 150 and moves == 1
    assert arch == {"a.width": 1.0, "b.width": 0.25, "c.kernel": 3}
    same, none = project_under_limit(best, logits, table, additive_cost, 200.0, SPACE.smallest())
    assert same == best and none == 0
    tiny, _ = project_under_limit(best, logits, table, additive_cost, 106.25, SPACE.smallest())
    assert additive_cost(tiny) <= 106.25


MBV2W_TINY = {"backbone": {"name": "mbv2_width", "width_mult": 0.25}, "input_size": 64}


def test_gradient_search_end_to_end_limit_outputs_resume_and_errors(tiny_config):
    from rich.console import Console

    from nasdet.config import BudgetConfig
    from nasdet.search.budget import CostModel
    from nasdet.stages.search import run_search
    from nasdet.space import load_arch

    cfg = tiny_config("ssdlite", model=MBV2W_TINY, data={"check_files": False}, supernet={"input_sizes": [48, 64]},
                      search={"strategy": "gradient", "recalib_batches": 1, "batch_size": 4, "max_images": 4,
                              "budget": {"metric": "macs", "max": 1e12},
                              "gradient": {"epochs": 2, "batch_size": 2, "samples": 2, "max_steps": 2}})
    model, space = fake_pretrain(cfg)
    cost = CostModel(model, space, ("macs",))
    small = {s: cost({**space.smallest(), "input_size": s})["macs"] for s in (48, 64)}
    big = cost({**space.default(), "input_size": 64})["macs"]
    quiet = Console(quiet=True)

    def with_budget(c, limit):
        return c.model_copy(update={"search": c.search.model_copy(update={"budget": BudgetConfig(metric="macs", max=limit)})})

    with pytest.raises(ValueError, match="smallest arch costs"):  # below the smallest arch: a clear error
        run_search(with_budget(cfg, small[48] * 0.9), console=quiet)
    from nasdet.search.gradient import GradientSearch
    assert issubclass(LimitBelowSmallest, ValueError) and GradientSearch
    # under the smallest arch at 48 px but not at 64, the only size searched: refused before the study is opened
    with pytest.raises(LimitBelowSmallest, match="at input_size 64"):
        run_search(with_budget(cfg, (small[48] + small[64]) / 2), console=quiet)
    assert not (Path(cfg.work_dir) / "search" / "study.journal").exists()

    # a limit the default arch breaks: the search must prune; only model.input_size (64) is searched
    limit = (small[64] + big) / 2
    run = with_budget(cfg, limit)
    summary = run_search(run, console=quiet)
    out = Path(run.work_dir) / "search"
    for name in ("results.csv", "best_arch.json", "pareto.json", "pareto.png", "study.journal", "gradient_state.pt",
                 "gradient.jsonl", "searched_arch.json"):
        assert (out / name).is_file(), name
    assert summary["records"] == 1  # one derived arch (search_resolution: one per input size)
    best = load_arch(out / "best_arch.json", space)
    assert cost(best)["macs"] <= limit < big and best == summary["best"]["arch"] and best["input_size"] == 64
    enot = json.loads((out / "searched_arch.json").read_text())
    assert len(enot["searched_arch"]) == 17 and enot["input_size"] == best["input_size"]
    log = [json.loads(line) for line in (out / "gradient.jsonl").read_text().splitlines()]
    assert {r["resolution"] for r in log} == {64} and all(r["step"] <= 2 for r in log)
    # resume: the result is in the study, nothing is searched or scored again
    again = run_search(run, console=quiet)
    assert again["records"] == 1 and (out / "gradient.jsonl").read_text().count("\n") == len(log)
    # one search per input size: a size whose smallest arch is over the limit is said to be left out (qa_latency #4)
    import io
    import shutil

    shutil.rmtree(out)
    sizes = with_budget(cfg, (small[48] + small[64]) / 2)
    sizes = sizes.model_copy(update={"search": sizes.search.model_copy(update={
        "gradient": sizes.search.gradient.model_copy(update={"search_resolution": True}),
        "resolution_tolerance": None})})
    buf = io.StringIO()
    summary = run_search(sizes, console=Console(file=buf, width=300))
    assert summary["best"]["arch"]["input_size"] == 48
    said = " ".join(buf.getvalue().split())
    assert "resolution 64: not searched, its smallest arch costs" in said and "> search.budget.max" in said
    assert "resolution 48: not searched" not in said


DEPTH_SPACE = SearchSpace({"stage1.depth": (1, 2, 3), "stage1.block0.expand": (3, 6), "stage1.block1.expand": (3, 6),
                           "stage1.block2.expand": (3, 6), "stage1.block2.kernel": (3, 5)},
                          default={"stage1.depth": 3, "stage1.block0.expand": 6, "stage1.block1.expand": 6,
                                   "stage1.block2.expand": 6, "stage1.block2.kernel": 3})


def depth_cost(arch) -> float:
    """Blocks beyond the depth do not run: their choices cost nothing."""
    total = 50.0
    for j in range(arch["stage1.depth"]):
        total += 10 * arch[f"stage1.block{j}.expand"] * (1 + j)
    return total + (4.0 if arch["stage1.depth"] == 3 and arch["stage1.block2.kernel"] == 5 else 0.0)


def test_expected_cost_with_depth_counts_a_blocks_choices_only_while_it_runs():
    names = DEPTH_SPACE.names
    table = CostTable(depth_cost, DEPTH_SPACE, DEPTH_SPACE.default(), names)
    logits = ArchLogits(DEPTH_SPACE, names)
    with torch.no_grad():
        for i, p in enumerate(logits.logits):
            p.copy_(torch.linspace(-0.5, 0.8, len(p)) * (i + 1))
    probs = [p.detach().double() for p in logits.probs()]
    brute = 0.0
    for vs in itertools.product(*(DEPTH_SPACE[n] for n in names)):
        a = dict(zip(names, vs))
        assert table.predict(a) == pytest.approx(depth_cost(a))
        brute += math.prod(float(probs[i][DEPTH_SPACE[n].index(a[n])]) for i, n in enumerate(names)) * depth_cost(a)
    assert float(table.expected(logits).detach()) == pytest.approx(brute, rel=1e-6)


def test_enot_width_recipes_load_with_enot_settings():
    from nasdet.config import load_config
    from nasdet.models.backbones.mbv2_width import WidthMobileNetV2, arch_from_enot
    from nasdet.models.supernet import BACKBONE_PREFIX
    from nasdet.space import prefix_arch

    root = Path(__file__).parent.parent / "configs" / "enot"
    pre, search, res, tune, tune_res = (load_config(root / f"ssd_mnv2_width_{n}_voc.yaml") for n in
                                        ("pretrain", "search", "search_with_resolution", "tune", "tune_on_resolution"))
    assert pre.model.backbone.name == "mbv2_width" and pre.train.epochs == 100 and pre.train.batch_size == 64
    g = search.search.gradient
    assert search.search.strategy == "gradient" and search.search.budget.max == 830e6
    assert (g.epochs, g.batch_size, g.optimizer, g.lr, g.momentum) == (20, 20, "sgd", 1.0, 0.9)
    r = res.search.gradient
    assert r.search_resolution and (r.epochs, r.batch_size, r.lr) == (10, 16, 0.001) and res.search.budget.max == 832e6
    assert min(res.supernet.input_sizes) == 320 and max(res.supernet.input_sizes) == 640
    assert tune.tune.searched_arch == [0] * 17 and tune.tune.train.epochs == 40
    assert tune_res.supernet.input_sizes == res.supernet.input_sizes  # the same space as the multires supernet
    space = WidthMobileNetV2(width_mult=0.25).search_space()
    arch = arch_from_enot(space.prefixed(BACKBONE_PREFIX), tune_res.tune.searched_arch)
    assert arch == prefix_arch(WidthMobileNetV2(width_mult=0.25).arch_from_enot(tune_res.tune.searched_arch),
                               BACKBONE_PREFIX)


def test_the_cost_table_is_exact_for_ofa_macs():
    """OFA's blocks have kernel and expand each: a depthwise conv's MACs are width x kernel^2, so per-choice deltas
    counted the savings of a smaller kernel and a smaller expand twice (smallest arch 88.8 M for 118.8 M at 224 px;
    the search's "(table)" figures and its limit penalty off by 25-30 %). With each block's joint table the MACs
    are exact, the depth gate included."""
    import random

    from nasdet.models.backbones.ofa_mobilenet import OFAMobileNetV3
    from nasdet.search.cost import count_macs

    net = OFAMobileNetV3.tiny(kernels=(3, 7), expands=(3, 6), depths=(1, 2)).eval()  # (fewer MACs counts)
    space = net.search_space()

    def macs(arch) -> float:
        with torch.no_grad():
            return float(count_macs(net.export(arch).to("meta"), torch.empty(1, 3, 64, 64, device="meta")))

    table = CostTable(macs, space, space.largest(), space.names)
    rng = random.Random(0)
    for arch in (space.smallest(), *(space.sample(rng) for _ in range(4))):
        assert table.predict(arch) == pytest.approx(macs(arch), rel=1e-9)
    # the expectation at one-hot probabilities is the arch's cost
    logits = ArchLogits(space, space.names)
    arch = space.smallest()
    with torch.no_grad():
        for name, p in zip(logits.names, logits.logits):
            p.copy_(torch.tensor([0.0 if v == arch[name] else -60.0 for v in space[name]]))
    assert float(table.expected(logits).detach()) == pytest.approx(macs(arch), rel=1e-6)
