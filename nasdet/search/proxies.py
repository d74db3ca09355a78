"""Zero-cost (training-free) rankers of a whole detector subnet: one forward/backward, no training.

- ``grad_norm`` (Abdelfattah et al. 2021, SamsungLabs/zero-cost-nas ``grad_norm``): the sum over conv and
  linear layers of the L2 norm of the weight gradient of the detector's training loss on one batch.
- ``synflow`` (Tanaka et al. 2020; zero-cost-nas ``synflow``): the network linearised (absolute weights,
  activations and squeeze-excitation gates removed, BN an identity at init, float64), an all-ones input, ``R`` = the sum of every head
  output; score = sum over conv and linear weights of ``|theta * dR/dtheta|``. Reported as log10: it spans
  orders of magnitude. (zero-cost-nas drops BN; MobileNets' ReLU6 would clip the all-positive signal,
  hence activations out.)
- ``mae_det`` (MAE-DET, Sun et al. 2022; DAMO-YOLO's TinyNAS ``entropy`` score): weights Gaussian (std 1),
  BN with unit affine and batch statistics, a Gaussian input batch; for each feature map the head reads,
  the log standard deviation of the map plus the log standard deviations that the BN layers before it
  normalised away (the scale the network would have without BN), averaged over the maps. It measures the
  expressivity of the whole backbone and neck at the subnet's input size.

All three take a static subnet (``export_detector``); ``grad_norm`` and ``synflow`` are used at the
subnet's scratch init (``scratch_subnet``), ``mae_det`` re-initialises it itself. Seeded: deterministic.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from ..errors import ConfigError
from ..models.detectors import dense_forward, get_input_size
from ..models.supernet import export_detector
from ..space import SearchSpace
from ..space.elastic import ElasticSE, he_fout_init

_WEIGHTED = (nn.Conv2d, nn.Linear)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Sigmoid)
# multiplicative gates: in the linearised network x * gate(x) squares the signal at every block (float64
# overflows within a few blocks), so they are treated as the identity, as the activations are
_GATES = (SqueezeExcitation, ElasticSE)


def scratch_subnet(model: nn.Module, space: SearchSpace, arch: Mapping[str, Any], seed: int = 0) -> nn.Module:
    """``arch`` of the supernet as a static detector with the from-scratch init, seeded: its backbone
    re-initialised as a network of its own (``he_fout_init``), the neck and heads as ``model`` has them, so
    ``model`` must be an untrained supernet (``untrained_supernet``): their init is the family's (torchvision's
    head init, the focal prior bias), which he_fout would zero (as ``nasdet tune``'s scratch)."""
    static = export_detector(model, arch, space)
    torch.manual_seed(seed)
    he_fout_init(static.backbone.body)
    return static


def untrained_supernet(cfg, num_classes: int, seed: int = 0) -> nn.Module:
    """The config's supernet freshly built, seeded, without any backbone weights: the source of scratch inits."""
    from ..models.supernet import build_supernet
    from ..train.trained import run_without_start_weights

    torch.manual_seed(seed)
    return build_supernet(run_without_start_weights(cfg), num_classes)[0].eval()


def grad_norm(model: nn.Module, images: Sequence[torch.Tensor], targets: Sequence[dict], **_: Any) -> float:
    """Sum of per-layer weight-gradient L2 norms of the training loss (sum of the loss terms) on one batch."""
    net = copy.deepcopy(model).train()
    net.zero_grad(set_to_none=True)
    losses = net(list(images), list(targets))
    sum(losses.values()).backward()
    with torch.no_grad():
        return float(sum(m.weight.grad.norm() for m in net.modules()
                         if isinstance(m, _WEIGHTED) and m.weight.grad is not None))


def synflow(model: nn.Module, **_: Any) -> float:
    """log10 of synflow's saliency sum on the linearised detector (see the module docstring)."""
    net = copy.deepcopy(model).eval().double()
    for name, child in list(net.named_modules()):
        for cname, c in list(child.named_children()):
            if isinstance(c, _ACTIVATIONS + _GATES):
                setattr(child, cname, nn.Identity())
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    s = get_input_size(net)
    x = torch.ones(1, 3, s, s, dtype=torch.float64)
    total = sum(o.sum() for o in dense_forward(net, x))
    total.backward()
    with torch.no_grad():
        score = sum(float((m.weight * m.weight.grad).abs().sum()) for m in net.modules()
                    if isinstance(m, _WEIGHTED) and m.weight.grad is not None)
    return math.log10(score) if score > 0 and math.isfinite(score) else (math.inf if score > 0 else -math.inf)


@torch.no_grad()
def mae_det(model: nn.Module, batch: int = 4, seed: int = 0, **_: Any) -> float:
    """MAE-DET's entropy score of the feature maps the head reads (see the module docstring)."""
    net = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            m.weight.fill_(1.0)
            m.bias.zero_()
    log_scale = [0.0]  # cumulative log std removed by the BN layers run so far
    produced: dict[int, float] = {}

    def bn_hook(module, inputs):
        x = inputs[0]
        var = x.double().transpose(0, 1).flatten(1).var(dim=1, unbiased=False).mean()
        log_scale[0] += 0.5 * math.log(max(float(var), 1e-30))

    def out_hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            produced[id(output)] = log_scale[0]

    handles = [m.register_forward_pre_hook(bn_hook) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles += [m.register_forward_hook(out_hook) for m in net.backbone.modules()]
    try:
        s = get_input_size(net)
        x = torch.randn(batch, 3, s, s, generator=g)
        feats = list(net.backbone(x).values())
        scores = [0.5 * math.log(max(float(f.double().var(unbiased=False)), 1e-30)) + produced.get(id(f), log_scale[0])
                  for f in feats]
    finally:
        for h in handles:
            h.remove()
    return sum(scores) / len(scores)


PROXIES: dict[str, Callable[..., float]] = {"grad_norm": grad_norm, "synflow": synflow, "mae_det": mae_det}


def proxy_score(name: str, model: nn.Module, space: SearchSpace, arch: Mapping[str, Any],
                images: Sequence[torch.Tensor] = (), targets: Sequence[dict] = (), seed: int = 0) -> float:
    """Proxy ``name`` of ``arch`` (a subnet of the supernet ``model``) at its scratch init, seeded.
    ``grad_norm`` needs a batch (``images``, ``targets``: model inputs, e.g. from ``proxy_batch``)."""
    if name not in PROXIES:
        raise ConfigError(f"zero-cost proxy {name!r} is not one of {sorted(PROXIES)}")
    if name == "grad_norm" and not len(images):
        raise ConfigError("the grad_norm proxy needs a batch of training images and targets")
    static = scratch_subnet(model, space, arch, seed)
    torch.manual_seed(seed)
    return float(PROXIES[name](static, images=images, targets=targets, seed=seed))


def proxy_batch(dataset, size: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    """A fixed, seeded batch of ``size`` images and targets of ``dataset`` (no augmentation)."""
    from ..data.transforms import targets_to, to_model_input

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size].tolist()
    images, targets = zip(*[dataset[i] for i in order])
    return to_model_input(images, "cpu"), targets_to(targets, "cpu")
