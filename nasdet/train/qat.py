"""Quantization-aware tuning: a trained detector fine-tuned with its network's convs and linears fake-quantized
(torch.ao.quantization ``FakeQuantize``) as onnxruntime's INT8 file computes them: int8 symmetric weights per
output channel, uint8 affine activations per tensor at every conv/linear input (moving-average min/max
observers). The fake-quant modules are taken off afterwards: the float weights have learnt to sit well on
the INT8 grid, and the export quantizes them as it does any model (PTQ ranges from calibration images).

BatchNorm is frozen (eval mode) during tuning: batches are small and the export folds BN into the convs.
Weights are fake-quantized before that fold, so the grid is the unfolded one's (the usual simplification
of eager-mode QAT without fused Conv-BN modules).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
from torch.nn.utils import parametrize

from ..data.dataset import collate_detection
from ..data.transforms import targets_to, to_model_input


class _WeightFakeQuant(nn.Module):
    """Parametrization: the weight as its int8 per-output-channel symmetric fake-quantized self."""

    def __init__(self):
        super().__init__()
        self.fq = FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-127, quant_max=127,
                               dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.fq(w)


def _activation_fake_quant() -> FakeQuantize:
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


def network_layers(model: nn.Module, module_names: tuple[str, ...]) -> list[nn.Module]:
    """The convs and linears under ``module_names`` (``DetectorFamily.network_modules``): what INT8 quantizes."""
    layers = []
    for name in module_names:
        root = model.get_submodule(name)
        layers += [m for m in root.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return layers


class FakeQuantized:
    """Context: ``model``'s network layers fake-quantized while inside; plain float modules again after."""

    def __init__(self, model: nn.Module, module_names: tuple[str, ...]):
        self.model, self.layers = model, network_layers(model, module_names)
        self.hooks: list = []

    def __enter__(self) -> "FakeQuantized":
        for layer in self.layers:
            parametrize.register_parametrization(layer, "weight", _WeightFakeQuant().to(layer.weight.device))
            fq = _activation_fake_quant().to(layer.weight.device)
            layer.add_module("input_fake_quant", fq)
            self.hooks.append(layer.register_forward_pre_hook(lambda m, args: (m.input_fake_quant(args[0]), *args[1:])))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.hooks:
            h.remove()
        for layer in self.layers:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)  # the float weights
            del layer.input_fake_quant


def qat_tune(model: nn.Module, dataset, module_names: tuple[str, ...], steps: int, lr: float, batch_size: int,
             device: torch.device, seed: int = 0) -> dict:
    """``steps`` SGD steps of the detection loss on ``dataset`` with the network fake-quantized (in place);
    returns the mean loss of the first and last tenth of the steps."""
    model.to(device).train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()  # frozen statistics (see the module docstring)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_detection,
                                         generator=torch.Generator().manual_seed(seed))
    losses = []
    with FakeQuantized(model, module_names):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        batches = itertools.chain.from_iterable(itertools.repeat(loader))
        for images, targets in itertools.islice(batches, steps):
            loss = sum(model(to_model_input(images, device), targets_to(targets, device)).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    model.eval()
    k = max(1, steps // 10)
    return {"steps": steps, "lr": lr, "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}
