"""Elastic (dynamic) modules after once-for-all's ``dynamic_op.py``, in nasdet's shape.

Each module wraps the LARGEST standard module (``self.conv = nn.Conv2d(max_in, max_out, max_k)``), so
weights sit where a static model keeps them. ``set_active(...)`` is the one place its active size is
set; one small method returns the active slice, ``forward`` runs the functional op on it, and
``export()`` copies the slice into a fresh plain module. Channels are always prefixes
(``weight[:out, :in]``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, SqueezeExcitation


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round to a multiple of ``divisor`` (at least ``min_value``), never more than 10 % below ``v`` (MobileNet rule)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _crop(start: int, end: int, size: int) -> slice:
    """Centre ``size`` of ``range(start, end)``."""
    lo = start + (end - start - size) // 2
    return slice(lo, lo + size)


def _param(t: torch.Tensor) -> nn.Parameter:
    """A trainable copy. Not ``requires_grad=t.requires_grad``: a kernel computed through the kernel
    transforms under ``no_grad`` does not require grad, and its exported conv would never train."""
    return nn.Parameter(t.detach().clone())


class ElasticConv2d(nn.Module):
    """A conv with elastic output/input channels (prefixes) and, if depthwise, elastic kernel size.

    ``depthwise=True``: groups = channels, so active in = active out. With several
    ``kernel_sizes`` (e.g. (3, 5, 7)) a smaller kernel is OFA's centre crop of the next larger (already
    transformed) kernel passed through a learned ``k*k x k*k`` matrix shared by all channels:
    7x7 -> 5x5 by ``kernel_transforms["7to5"]`` (25x25), 5x5 -> 3x3 by ``kernel_transforms["5to3"]``
    (9x9); both start as identity. Padding is ``k // 2`` (same size for odd k).
    """

    def __init__(self, max_in: int, max_out: int, kernel_sizes: int | tuple[int, ...] = 1, stride: int = 1,
                 depthwise: bool = False, bias: bool = False):
        super().__init__()
        ks = tuple(sorted({kernel_sizes} if isinstance(kernel_sizes, int) else set(kernel_sizes)))
        if any(k % 2 == 0 for k in ks):
            raise ValueError(f"ElasticConv2d: kernel sizes must be odd, got {ks}")
        if len(ks) > 1 and not depthwise:
            raise ValueError("ElasticConv2d: an elastic kernel size is only supported for depthwise convs (as OFA)")
        if depthwise and max_in != max_out:
            raise ValueError(f"ElasticConv2d: depthwise needs max_in == max_out, got {max_in}, {max_out}")
        self.kernel_sizes = ks
        self.depthwise = depthwise
        self.stride = stride
        k = ks[-1]
        self.conv = nn.Conv2d(max_in, max_out, k, stride, padding=k // 2, groups=max_in if depthwise else 1, bias=bias)
        self.kernel_transforms = nn.ParameterDict(
            {f"{big}to{small}": nn.Parameter(torch.eye(small * small)) for big, small in zip(ks[:0:-1], ks[-2::-1])}
        )
        self.active_in, self.active_out, self.active_kernel = max_in, max_out, k
        self._eval_cache: tuple | None = None  # (key, weight) while inferring with one arch

    @property
    def max_in(self) -> int:
        return self.conv.in_channels

    @property
    def max_out(self) -> int:
        return self.conv.out_channels

    def set_active(self, out_channels: int | None = None, in_channels: int | None = None,
                   kernel_size: int | None = None) -> None:
        """Set the active sizes (None keeps the current one). Depthwise: ``out_channels`` sets both."""
        if self.depthwise:
            c = out_channels if out_channels is not None else in_channels
            if c is not None:
                self._check("channels", c, self.max_out)
                self.active_in = self.active_out = c
        else:
            if out_channels is not None:
                self._check("out_channels", out_channels, self.max_out)
                self.active_out = out_channels
            if in_channels is not None:
                self._check("in_channels", in_channels, self.max_in)
                self.active_in = in_channels
        if kernel_size is not None:
            if kernel_size not in self.kernel_sizes:
                raise ValueError(f"ElasticConv2d: kernel_size {kernel_size} not among {self.kernel_sizes}")
            self.active_kernel = kernel_size

    @staticmethod
    def _check(what: str, value: int, largest: int) -> None:
        if not 0 < value <= largest:
            raise ValueError(f"ElasticConv2d: {what} {value} must be in 1..{largest}")

    def active_weight(self) -> torch.Tensor:
        """The weight of the active conv: (out, in or 1, k, k)."""
        out, k = self.active_out, self.active_kernel
        if self.depthwise:
            w = self.conv.weight[:out]
            size = self.kernel_sizes[-1]
            for src, dst in zip(self.kernel_sizes[:0:-1], self.kernel_sizes[-2::-1]):
                if src <= k:
                    break
                crop = w[:, :, _crop(0, size, dst), _crop(0, size, dst)].reshape(-1, dst * dst)
                w = F.linear(crop, self.kernel_transforms[f"{src}to{dst}"]).reshape(out, 1, dst, dst)
                size = dst
            return w
        full = self.kernel_sizes[-1]
        return self.conv.weight[:out, : self.active_in, _crop(0, full, k), _crop(0, full, k)]

    def active_bias(self) -> torch.Tensor | None:
        return None if self.conv.bias is None else self.conv.bias[: self.active_out]

    def _weight_key(self) -> tuple:
        """Changes whenever the active weight would: active sizes, or any in-place update of the
        parameters (optimizer steps, load_state_dict) through their version counters."""
        return (self.active_out, self.active_in, self.active_kernel, self.conv.weight._version,
                self.conv.weight.data_ptr(), *(m._version for m in self.kernel_transforms.values()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.active_in if self.depthwise else 1
        if self.training or torch.is_grad_enabled():
            weight = self.active_weight()
        else:
            # Inference: slice (and kernel-transform) once per arch, contiguous, instead of every call.
            key = self._weight_key()
            if self._eval_cache is None or self._eval_cache[0] != key:
                self._eval_cache = (key, self.active_weight().detach().contiguous())
            weight = self._eval_cache[1]
        return F.conv2d(x, weight, self.active_bias(), self.stride, self.active_kernel // 2, 1, groups)

    def export(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` of the active sizes (the transformed kernel for a smaller depthwise kernel)."""
        k = self.active_kernel
        conv = nn.Conv2d(self.active_in, self.active_out, k, self.stride, padding=k // 2,
                         groups=self.active_in if self.depthwise else 1, bias=self.conv.bias is not None)
        with torch.no_grad():
            conv.weight = _param(self.active_weight())
            if conv.bias is not None:
                conv.bias = _param(self.active_bias())
        return conv

    def extra_repr(self) -> str:
        return f"active: out={self.active_out}, in={self.active_in}, kernel={self.active_kernel}"


class ElasticBatchNorm2d(nn.Module):
    """BatchNorm over the first ``active_features`` channels of a largest ``nn.BatchNorm2d``.

    In train mode only the active slice of the running stats moves (the slices are views).
    ``frozen=True``: always normalises with the running stats and its affine parameters do not train
    (as torchvision's ``FrozenBatchNorm2d``).
    """

    def __init__(self, max_features: int, eps: float = 1e-5, momentum: float | None = 0.1, frozen: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm2d(max_features, eps=eps, momentum=momentum)
        self.frozen = frozen
        if frozen:
            self.bn.weight.requires_grad_(False)
            self.bn.bias.requires_grad_(False)
        self.active_features = max_features

    def set_active(self, features: int) -> None:
        if not 0 < features <= self.bn.num_features:
            raise ValueError(f"ElasticBatchNorm2d: features {features} must be in 1..{self.bn.num_features}")
        self.active_features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, c = self.bn, self.active_features
        batch_stats = self.training and not self.frozen
        factor = 0.0
        if batch_stats:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            # nn.SyncBatchNorm.convert_sync_batchnorm (DDP on CUDA) swaps the inner bn; its own forward is
            # not used here, so the statistics of the active slice are synchronised explicitly.
            if isinstance(bn, nn.SyncBatchNorm) and _world_size(bn.process_group) > 1:
                return sync_batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                                       factor, bn.eps, bn.process_group)
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                            batch_stats, factor, bn.eps)

    def export(self) -> nn.Module:
        """``nn.BatchNorm2d`` (or ``FrozenBatchNorm2d`` if frozen) with the active slice copied."""
        c, bn = self.active_features, self.bn
        if self.frozen:
            out = FrozenBatchNorm2d(c, eps=bn.eps)
        else:
            out = nn.BatchNorm2d(c, eps=bn.eps, momentum=bn.momentum)
            out.weight = _param(bn.weight[:c])
            out.bias = _param(bn.bias[:c])
            out.num_batches_tracked.copy_(bn.num_batches_tracked)
        for name in ("running_mean", "running_var"):
            getattr(out, name).copy_(getattr(bn, name)[:c].detach())
        if self.frozen:
            out.weight.copy_(bn.weight[:c].detach())
            out.bias.copy_(bn.bias[:c].detach())
        return out.to(bn.weight.device)

    def extra_repr(self) -> str:
        return f"active: features={self.active_features}" + (", frozen" if self.frozen else "")


def _world_size(group) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def sync_batch_norm(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor, momentum: float, eps: float, group=None) -> torch.Tensor:
    """Training-mode batch norm over the batch of every rank of ``group`` (SyncBN), for any backend.

    Per-channel sums, sums of squares and counts are all-reduced with the autograd-aware
    ``torch.distributed.nn.functional.all_reduce``, so gradients flow through the global statistics as
    in ``nn.SyncBatchNorm``; running statistics (views: the active slice) move in place, with the
    unbiased variance."""
    from torch.distributed.nn.functional import all_reduce

    c = x.size(1)
    xf = x.float()
    count = torch.full((1,), xf.numel() // c, dtype=xf.dtype, device=xf.device)
    stats = all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]), group=group)
    n = stats[-1]
    mean = stats[:c] / n
    var = (stats[c:2 * c] / n - mean * mean).clamp(min=0)
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_((var * n / (n - 1).clamp(min=1)).to(running_var.dtype), alpha=momentum)
    shape = (1, c, 1, 1)
    y = (xf - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)
    return (y * weight.view(shape) + bias.view(shape)).to(x.dtype)


class ElasticSE(nn.Module):
    """Squeeze-and-excitation over the first ``active_channels`` channels (MobileNetV3 / OFA ``DynamicSE``).

    mean pool -> 1x1 reduce (bias) -> ReLU -> 1x1 expand (bias) -> hard sigmoid -> scale, with the
    reduced width ``make_divisible(channels // reduction, divisor)`` of the active channels.
    """

    def __init__(self, max_channels: int, reduction: int = 4, divisor: int = 8):
        super().__init__()
        self.reduction, self.divisor = reduction, divisor
        mid = self.squeeze_channels(max_channels)
        self.reduce = nn.Conv2d(max_channels, mid, 1, bias=True)
        self.expand = nn.Conv2d(mid, max_channels, 1, bias=True)
        self.active_channels = max_channels

    def squeeze_channels(self, channels: int) -> int:
        return make_divisible(channels // self.reduction, self.divisor)

    def set_active(self, channels: int) -> None:
        if not 0 < channels <= self.expand.out_channels:
            raise ValueError(f"ElasticSE: channels {channels} must be in 1..{self.expand.out_channels}")
        self.active_channels = channels

    def active_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.active_channels
        m = self.squeeze_channels(c)
        return self.reduce.weight[:m, :c], self.reduce.bias[:m], self.expand.weight[:c, :m], self.expand.bias[:c]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = self.active_params()
        s = x.mean((2, 3), keepdim=True)
        s = F.hardsigmoid(F.conv2d(F.relu(F.conv2d(s, w1, b1)), w2, b2))
        return x * s

    def export(self) -> SqueezeExcitation:
        """torchvision's ``SqueezeExcitation`` (ReLU, Hardsigmoid) with the active slice copied."""
        w1, b1, w2, b2 = self.active_params()
        se = SqueezeExcitation(self.active_channels, w1.shape[0], activation=nn.ReLU, scale_activation=nn.Hardsigmoid)
        se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias = (_param(t) for t in (w1, b1, w2, b2))
        return se

    def extra_repr(self) -> str:
        return f"active: channels={self.active_channels}"


def he_fout_init(module: nn.Module) -> None:
    """OFA's ``init_models(net, "he_fout")``, also torchvision's MobileNet init: convs kaiming-normal
    (fan_out), BN weight 1 / bias 0, linear N(0, 0.01). Applied to the largest weights. PyTorch's
    default conv init is much smaller and makes deep MobileNets learn slowly from scratch."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------ channel re-organisation
ChannelMove = tuple[torch.Tensor, int, torch.Tensor]  # (a weight or buffer, its dim, the new order along it)


def grouped_importance_order(importance: torch.Tensor, keep: Sequence[int] = ()) -> torch.Tensor:
    """Channels by ``importance``, largest first, within each group ``[w_i, w_i+1)`` that the widths ``keep`` bound
    (OFA's ``re_organize_middle_weights``: a width trained in an earlier phase keeps its channels, sorted among
    themselves, and a new smaller width takes the most important of them). Ties keep their order."""
    order, start = [], 0
    for end in sorted({int(w) for w in keep if 0 < w < len(importance)} | {len(importance)}):
        order.append(torch.sort(importance[start:end], descending=True, stable=True).indices + start)
        start = end
    return torch.cat(order)


def middle_channel_moves(expand_conv: ElasticConv2d, expand_bn: ElasticBatchNorm2d, depth_conv: ElasticConv2d,
                         depth_bn: ElasticBatchNorm2d, project_conv: ElasticConv2d, se: "ElasticSE | None",
                         keep: Sequence[int] = ()) -> list[ChannelMove]:
    """An inverted residual block's middle channels sorted by importance, the L1 norm of the project conv's weights
    on each (``grouped_importance_order`` with ``keep``), as OFA sorts them when a phase opens a smaller expand
    ratio: the expand conv's outputs and BN, the depthwise conv and BN, the SE's input and output, the project
    conv's inputs; then the SE's own middle channels by its expand conv's L1 norm. The full block computes the
    same; a smaller expand (a prefix) keeps the most important channels. Returns the moves (``apply_channel_moves``)."""
    order = grouped_importance_order(project_conv.conv.weight.detach().abs().sum(dim=(0, 2, 3)), keep)
    moves: list[ChannelMove] = [(expand_conv.conv.weight, 0, order), (depth_conv.conv.weight, 0, order),
                                (project_conv.conv.weight, 1, order)]
    for conv in (expand_conv, depth_conv):
        if conv.conv.bias is not None:
            moves.append((conv.conv.bias, 0, order))
    for bn in (expand_bn, depth_bn):
        inner = bn.bn
        moves += [(t, 0, order) for t in (inner.weight, inner.bias, inner.running_mean, inner.running_var) if t is not None]
    if se is not None:
        moves += [(se.expand.weight, 0, order), (se.expand.bias, 0, order), (se.reduce.weight, 1, order)]
        se_importance = se.expand.weight.detach().abs().sum(dim=(0, 2, 3))  # (per input of expand: unchanged by order)
        se_order = torch.sort(se_importance, descending=True, stable=True).indices
        moves += [(se.expand.weight, 1, se_order), (se.reduce.weight, 0, se_order), (se.reduce.bias, 0, se_order)]
    return moves


@torch.no_grad()
def apply_channel_moves(moves: Sequence[ChannelMove], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Each move in place (parameters keep their identity), and on the optimizer's state of that parameter (SGD's
    momentum, Adam's moments: a buffer left in the old order would push each channel with another's history)."""
    for t, dim, order in moves:
        order = order.to(t.device)
        t.copy_(t.index_select(dim, order))
        state = optimizer.state.get(t) if optimizer is not None and isinstance(t, nn.Parameter) else None
        for v in (state or {}).values():
            if torch.is_tensor(v) and v.shape == t.shape:
                v.copy_(v.index_select(dim, order.to(v.device)))
