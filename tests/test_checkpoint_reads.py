"""load_checkpoint keeps the files it read last in memory: a second read of an unchanged file unpickles nothing,
and every read gets its own copy (an optimizer's state loaded from it is stepped in place)."""
from __future__ import annotations

import os
import random

import torch

from nasdet.train import checkpoint as ckpt_module
from nasdet.train.checkpoint import load_checkpoint, save_checkpoint


def checkpoint_state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": random.getstate(),
            "config": {"train": {"lr": 0.1, "sizes": [64, 96]}}, "step": seed}


def counting_torch_load(monkeypatch) -> list:
    calls = []
    real = torch.load

    def load(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "load", load)
    return calls


def test_a_second_read_comes_from_memory_as_a_copy_of_its_own(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(checkpoint_state(1), path)
    calls = counting_torch_load(monkeypatch)
    first, second = load_checkpoint(path), load_checkpoint(path)
    assert len(calls) == 1
    assert first["model"].keys() == second["model"].keys() and first["config"] == second["config"]
    assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    assert type(second["model"]) is type(first["model"])
    assert second["model"]._metadata == first["model"]._metadata  # the state_dict's version records
    assert first["rng"] == second["rng"] and isinstance(second["rng"], tuple)
    # what a caller does to its copy stays in its copy
    weight = next(iter(first["model"]))
    first["model"][weight].add_(1.0)
    exp_avg = first["optimizer"]["state"][0]["exp_avg"]
    exp_avg.mul_(0.0)
    first["config"]["train"]["sizes"].append(128)
    third = load_checkpoint(path)
    assert len(calls) == 1
    assert torch.equal(third["model"][weight], second["model"][weight])
    assert not torch.equal(third["model"][weight], first["model"][weight])
    assert third["optimizer"]["state"][0]["exp_avg"].abs().sum() > 0
    assert third["config"]["train"]["sizes"] == [64, 96]
    # an optimizer and a model load from it as from a file just read
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model.load_state_dict(third["model"])
    opt = torch.optim.AdamW(model.parameters())
    opt.load_state_dict(third["optimizer"])
    opt.step()  # steps the state it loaded, not the remembered file's
    assert torch.equal(load_checkpoint(path)["optimizer"]["state"][0]["exp_avg"],
                       second["optimizer"]["state"][0]["exp_avg"])


def test_a_rewritten_file_is_read_again(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(checkpoint_state(1), path)
    calls = counting_torch_load(monkeypatch)
    assert load_checkpoint(path)["step"] == 1
    save_checkpoint(checkpoint_state(2), path)  # replaced by a rename, as every checkpoint is written
    assert load_checkpoint(path)["step"] == 2 and len(calls) == 2
    assert [k[0] for k in ckpt_module._RECENT].count(str(path.resolve())) == 1  # the older content let go
    # rewritten in place to the same size (another program): its times change
    other = tmp_path / "other.pt"
    save_checkpoint(checkpoint_state(3), other)
    data = other.read_bytes()
    assert len(data) == path.stat().st_size
    before = path.stat().st_mtime_ns
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(before + 10**9, before + 10**9))
    assert load_checkpoint(path)["step"] == 3 and len(calls) == 3


def test_only_the_last_files_stay_in_memory(tmp_path, monkeypatch):
    paths = [tmp_path / f"{i}.pt" for i in range(2)]
    for i, p in enumerate(paths):
        save_checkpoint(checkpoint_state(i), p)
    monkeypatch.setattr(ckpt_module, "RECENT_MAX_FILES", 1)
    calls = counting_torch_load(monkeypatch)
    for p in (paths[0], paths[1], paths[0], paths[0]):
        load_checkpoint(p)
    assert calls == [paths[0], paths[1], paths[0]]
    monkeypatch.setattr(ckpt_module, "RECENT_MAX_BYTES", 2 * paths[0].stat().st_size - 2)  # a file over half: not kept
    load_checkpoint(paths[1])
    load_checkpoint(paths[1])
    assert calls[3:] == [paths[1], paths[1]]


def test_a_rewrite_the_files_stat_does_not_show_is_read_again(tmp_path, monkeypatch):
    """A filesystem of 1 s timestamps gives two writes in a second the same times, and a rename hands the freed inode
    back: a resumed run in the same process got the older state. The entries' CRC-32s tell the files apart."""
    from pathlib import Path

    path = tmp_path / "last.pt"
    save_checkpoint(checkpoint_state(1), path)
    frozen, real_stat = path.stat(), Path.stat
    monkeypatch.setattr(Path, "stat", lambda self, *a, **k: frozen if str(self) == str(path) else real_stat(self, *a, **k))
    assert load_checkpoint(path)["step"] == 1
    for step in (2, 3):
        save_checkpoint(checkpoint_state(step), path)
        assert load_checkpoint(path)["step"] == step


def test_what_load_state_dict_writes_into_a_read_stays_in_that_read(tmp_path):
    """load_state_dict(assign=True) writes into the state_dict's _metadata: shared with the remembered file, every
    later read loaded by assignment (a resumed trainer's optimizer then stepped parameters the model no longer had)."""
    path = tmp_path / "last.pt"
    save_checkpoint(checkpoint_state(1), path)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model.load_state_dict(load_checkpoint(path)["model"], assign=True)
    again = load_checkpoint(path)["model"]
    assert not any("assign_to_params_buffers" in m for m in again._metadata.values())
    weight = model[0].weight
    model.load_state_dict(again)
    assert model[0].weight is weight  # copied into, not replaced
