import json
import random

import pytest

from nasdet.space import ArchError, NoArchUnderCost, SearchSpace, load_arch, prefix_arch, save_arch, strip_prefix


def make_space() -> SearchSpace:
    return SearchSpace({"depth": (2, 3, 4), "kernel": (3, 5, 7), "act": ("relu", "hswish")})


def test_validate_names_the_bad_choice_and_allowed_values():
    space = make_space()
    assert space.validate({"depth": 3, "kernel": 5, "act": "relu"}) == {"depth": 3, "kernel": 5, "act": "relu"}
    with pytest.raises(ArchError, match=r"'kernel' = 4 is not allowed; allowed values: \[3, 5, 7\]"):
        space.validate({"depth": 3, "kernel": 4, "act": "relu"})
    with pytest.raises(ArchError, match=r"unknown choice name\(s\) 'kernal'") as e:
        space.validate({"depth": 3, "kernal": 5, "act": "relu"})
    assert "missing choice name(s) 'kernel'" in str(e.value)
    with pytest.raises(ArchError, match="missing choice name"):
        space.validate({"depth": 3})
    with pytest.raises(ArchError, match="'act' = 'gelu'.*'relu', 'hswish'"):
        space.validate({"depth": 3, "kernel": 5, "act": "gelu"})
    assert isinstance(ArchError("x"), ValueError)
    assert not space.is_valid({"depth": True, "kernel": 3, "act": "relu"})  # bool is not the int 1
    assert space.validate({"depth": 3.0, "kernel": 5, "act": "relu"})["depth"] == 3  # normalised to the choice


def test_space_id_is_stable_and_follows_choices():
    a, b = make_space(), make_space()
    assert a.space_id == b.space_id and len(a.space_id) == 16 and a == b and hash(a) == hash(b)
    int(a.space_id, 16)
    # insertion order of names does not change the id; choices (or their order) do
    assert SearchSpace({"act": ("relu", "hswish"), "kernel": (3, 5, 7), "depth": (2, 3, 4)}).space_id == a.space_id
    assert SearchSpace({"depth": (2, 3), "kernel": (3, 5, 7), "act": ("relu", "hswish")}).space_id != a.space_id
    assert SearchSpace({"depth": (4, 3, 2), "kernel": (3, 5, 7), "act": ("relu", "hswish")}).space_id != a.space_id
    assert SearchSpace({"depth2": (2, 3, 4), "kernel": (3, 5, 7), "act": ("relu", "hswish")}).space_id != a.space_id


def test_space_id_is_a_fixed_function_of_the_choices():
    # a hard-coded value: the id must not depend on the process (no Python hash randomisation)
    assert SearchSpace({"k": (3, 5)}).space_id == SearchSpace({"k": [3, 5]}).space_id
    import hashlib
    payload = json.dumps(sorted({"k": (3, 5)}.items()), separators=(",", ":"), sort_keys=True)
    assert SearchSpace({"k": (3, 5)}).space_id == hashlib.sha256(payload.encode()).hexdigest()[:16]


def test_bad_spaces_are_refused():
    with pytest.raises(ArchError, match="no values"):
        SearchSpace({"k": ()})
    with pytest.raises(ArchError, match="repeats"):
        SearchSpace({"k": (3, 3)})


def test_smallest_largest_default_num_archs():
    space = make_space()
    assert space.smallest() == {"depth": 2, "kernel": 3, "act": "relu"}
    assert space.largest() == {"depth": 4, "kernel": 7, "act": "hswish"}
    assert space.default() == space.smallest()
    custom = SearchSpace(space.choices, default=space.largest())
    assert custom.default() == space.largest() and custom.space_id == space.space_id
    assert space.num_archs() == 18
    with pytest.raises(ArchError):
        SearchSpace(space.choices, default={"depth": 9, "kernel": 3, "act": "relu"})


def test_sample_mutate_crossover_stay_valid():
    space, rng = make_space(), random.Random(0)
    samples = [space.sample(rng) for _ in range(200)]
    for arch in samples:
        space.validate(arch)
    assert {a["kernel"] for a in samples} == {3, 5, 7}
    for arch in samples[:50]:
        m = space.mutate(arch, rng, prob=1.0)
        space.validate(m)
        assert all(m[n] != arch[n] for n in space)  # prob 1: every choice moves
        assert space.mutate(arch, rng, prob=0.0) == arch
        c = space.crossover(arch, samples[-1], rng)
        space.validate(c)
        assert all(c[n] in (arch[n], samples[-1][n]) for n in space)
    with pytest.raises(ArchError):
        space.mutate({"depth": 9, "kernel": 3, "act": "relu"}, rng, 0.5)


def test_sample_under_rejects_and_explains():
    space, rng = make_space(), random.Random(1)
    cost = lambda a: a["depth"] * a["kernel"]  # noqa: E731
    for _ in range(20):
        assert cost(space.sample_under(rng, cost, 10)) <= 10
    with pytest.raises(NoArchUnderCost, match="smallest arch costs 6"):
        space.sample_under(rng, cost, 5, max_tries=20)


def test_restrict_keeps_order_and_checks():
    space = make_space()
    r = space.restrict({"kernel": [7, 3]})
    assert r["kernel"] == (3, 7) and r["depth"] == (2, 3, 4)
    assert r.space_id != space.space_id
    assert r.restrict({"kernel": [7]}).largest()["kernel"] == 7
    assert space.restrict({"depth": 4})["depth"] == (4,)
    with pytest.raises(ArchError, match="'kernel' cannot be restricted to \\[9\\]; allowed values: \\[3, 5, 7\\]"):
        space.restrict({"kernel": [9]})
    with pytest.raises(ArchError, match="unknown choice name"):
        space.restrict({"kernels": [3]})
    with pytest.raises(ArchError):
        space.restrict({"kernel": []})
    big_default = SearchSpace(space.choices, default=space.largest())
    assert big_default.restrict({"kernel": (3, 5)}).default()["kernel"] == 5  # the largest stays the largest


def test_prefix_and_merge_compose_parts():
    backbone = SearchSpace({"stage1.block0.kernel": (3, 5, 7)})
    head = SearchSpace({"tower.op": ("sep3", "dil3")})
    det = SearchSpace.merge(backbone.prefixed("backbone"), head.prefixed("head."), SearchSpace({"input_size": (256, 320)}))
    assert det.names == ("backbone.stage1.block0.kernel", "head.tower.op", "input_size")
    arch = det.sample(random.Random(0))
    assert backbone.validate(strip_prefix(arch, "backbone")) == {"stage1.block0.kernel": arch["backbone.stage1.block0.kernel"]}
    assert prefix_arch({"tower.op": "sep3"}, "head") == {"head.tower.op": "sep3"}
    with pytest.raises(ArchError, match="more than one space"):
        SearchSpace.merge(backbone, backbone)


def test_arch_json_round_trip_and_wrong_space(tmp_path):
    space = make_space()
    arch = space.sample(random.Random(3))
    path = tmp_path / "search" / "best_arch.json"
    save_arch(path, arch, space)
    data = json.loads(path.read_text())
    assert data == {"space_id": space.space_id, "arch": arch}
    assert load_arch(path, space) == arch
    other = space.restrict({"depth": (2, 3)})
    with pytest.raises(ArchError, match=f"search space {space.space_id}, not of this space {other.space_id}"):
        load_arch(path, other)
    with pytest.raises(ArchError):
        save_arch(tmp_path / "bad.json", {"depth": 1, "kernel": 3, "act": "relu"}, space)
    data["arch"]["kernel"] = 4  # edited by hand: same space id, invalid value
    path.write_text(json.dumps(data))
    with pytest.raises(ArchError, match=f"^{path}: .*'kernel' = 4"):  # which file: best_arch.json, tune.arch, ...
        load_arch(path, space)


def test_elastic_conv_eval_cache_follows_arch_and_weight_updates():
    import torch

    from nasdet.space.elastic import ElasticConv2d

    torch.manual_seed(0)
    conv = ElasticConv2d(8, 8, (3, 5, 7), depthwise=True).eval()
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        a = conv(x)
        conv.set_active(8, kernel_size=3)
        b = conv(x)  # a new arch is not served from the cache
        assert not torch.allclose(a, b)
        assert torch.allclose(b, torch.nn.functional.conv2d(x, conv.active_weight(), None, 1, 1, 1, 8))
        conv.kernel_transforms["5to3"].add_(0.1)  # an in-place update (optimizer step, load_state_dict)
        c = conv(x)
        assert not torch.allclose(b, c)
        conv.conv.weight.mul_(2.0)
        assert torch.allclose(conv(x), 2 * c, atol=1e-5)
