"""Optimiser with no weight decay on norm weights and biases, and warm-up + cosine/step/linear schedules."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, norm_bias_decay: bool) -> list[dict]:
    """Two groups: decayed weights, and (unless ``norm_bias_decay``) norm parameters + biases at wd 0."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if not norm_bias_decay and (isinstance(module, _NORMS) or name.endswith("bias")):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def fused(groups: list[dict]) -> dict:
    """``{"fused": True}`` when every parameter is a floating tensor on the CPU or a CUDA device, else ``{}``.
    torch's fused AdamW kernel updates all parameters in one call where its default on the CPU loops over
    them in Python: 5.6 -> 1.2 ms a step for the demo's baseline (262 tensors), about 5 % of its step. The
    same update up to float rounding; torch picks fused only on request. The same for SGD with momentum (3.4-3.7
    -> 0.9-1.1 ms a step for the tune stage's 208 tensors on the CPU), with ``zero_momentum_buffers``."""
    params = [p for g in groups for p in g["params"]]
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if ok else {}


def zero_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give each parameter of a fused momentum SGD without a momentum buffer one of zeros. torch's fused SGD
    takes a group's first step as "every buffer is missing" and fails on a group where only some are (a
    supernet's path first sampled after the first step). With dampening 0 (nasdet's SGD) a zero buffer makes
    the same first update as a missing one: buffer = 0.9 * 0 + grad = grad. (A checkpoint of the unfused SGD,
    whose buffers are only those of parameters that had gradients, loads its groups' ``fused: False`` too.)"""
    for group in optimizer.param_groups:
        if not group.get("fused") or not group.get("momentum"):
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def momentum_sgd(groups: list[dict], lr: float, momentum: float, nesterov: bool = False) -> torch.optim.SGD:
    """torch's SGD over ``groups``, fused where every parameter can take it, momentum buffers started at zero."""
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, **fused(groups))
    zero_momentum_buffers(opt)
    return opt


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """``cfg``: nasdet.config.OptimizerConfig. Build it after the model is on its device (``fused``)."""
    groups = param_groups(model, cfg.weight_decay, cfg.norm_bias_decay)
    if cfg.name == "sgd":
        return momentum_sgd(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **fused(groups))
    raise ConfigError(f"train.optimizer.name {cfg.name!r} is not sgd or adamw")


class WarmupSchedule:
    """LR factor at a step: linear warm-up from ``warmup_factor``, then cosine / step / linear / constant.

    A plain object (not a closure) so LambdaLR's state_dict stores its fields and
    ``torch.load(weights_only=True)`` can read it back.
    """

    def __init__(self, cfg, total_steps: int, restarts: list[tuple[int, float, int]] = ()):
        self.name = cfg.name
        self.total = max(int(total_steps), 1)
        self.warmup = min(int(cfg.warmup_steps), self.total - 1) if self.total > 1 else 0
        self.warmup_factor = float(cfg.warmup_factor)
        self.milestones = [int(round(m * self.total)) for m in cfg.milestones]
        self.gamma = float(cfg.gamma)
        self.min_ratio = float(cfg.min_lr_ratio)
        # (first step, lr factor, warm-up steps): from each first step the schedule starts again, over the steps up
        # to the next restart, scaled by its factor (a supernet.schedule phase with its own lr: OFA's phases)
        self.restarts = [(int(s), float(f), int(w)) for s, f, w in sorted(restarts)]
        self.milestone_fractions = [float(m) for m in cfg.milestones]

    def __call__(self, step: int) -> float:
        if not self.restarts:
            return self._factor(step, self.total, self.warmup, self.milestones)
        firsts = [0, *(s for s, _, _ in self.restarts), self.total]
        i = sum(step >= s for s, _, _ in self.restarts)  # 0: before the first restart
        start, end = firsts[i], max(firsts[i + 1], firsts[i] + 1)
        total = end - start
        scale, warmup = (1.0, self.warmup) if i == 0 else self.restarts[i - 1][1:]
        warmup = min(warmup, total - 1) if total > 1 else 0
        milestones = [int(round(m * total)) for m in self.milestone_fractions]
        return scale * self._factor(step - start, total, warmup, milestones)

    def _factor(self, step: int, total: int, warmup: int, milestones: list[int]) -> float:
        if step < warmup:
            alpha = step / max(warmup, 1)
            warm = self.warmup_factor * (1 - alpha) + alpha
        else:
            warm = 1.0
        if self.name == "cosine":
            t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
            main = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        elif self.name == "step":
            main = self.gamma ** sum(step >= m for m in milestones)
        elif self.name == "linear":  # SPOS / DetNAS ImageNet: LambdaLR(1 - step / total_iters), to 0
            main = self.min_ratio + (1 - self.min_ratio) * max(1.0 - step / total, 0.0)
        else:
            main = 1.0
        return warm * main


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int,
                    restarts: list[tuple[int, float, int]] = ()) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupSchedule(cfg, total_steps, restarts))


def restart_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Forget the optimizer's state (momentum, Adam's moments and step counts), as a new run's optimizer would."""
    optimizer.state.clear()
    zero_momentum_buffers(optimizer)


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)``, the same to the bit, cheaper on the CPU:
    - it skips the multiply by 1 when no gradient needs scaling. torch multiplies every gradient by
      ``min(max_norm / (norm + 1e-6), 1)`` to avoid a device sync; on the CPU the test is free and the multiply
      is not (0.3-0.7 ms of the tune stage's 208 gradients, ~1 % of a demo step). Scaling by exactly 1 leaves a
      float as it is; a non-finite norm still scales (NaN fails ``>= 1``), as torch's does;
    - it takes the per-tensor norms and the multiply in one foreach call each, where torch on the CPU loops in
      Python (the CPU's foreach kernels run the same per-tensor ops, so the same floats)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or any(g.device.type != "cpu" or g.dtype != grads[0].dtype or g.is_sparse for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)  # (a GPU's foreach already; mixed dtypes: rare)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    coef = max_norm / (total + 1e-6)
    if not bool(coef >= 1.0):
        torch._foreach_mul_(grads, torch.clamp(coef, max=1.0))
    return total
