"""Why SSDLite learns slowly on the shapes set: train the largest subnet of the OFA demo supernet alone.

    python benchmarks/ssdlite_largest_subnet.py base 5 [levels=c3,c4,c5] [loss=focal] [width=0.5] [lr=0.004]
    python benchmarks/ssdlite_largest_subnet.py tap 5     # C4 = the 1x1 expansion of the first stride-32 block

``base``: the exported largest subnet of configs/demo/ofa_ssdlite_shapes.yaml's backbone, with the levels,
loss and width given. ``tap``: torchvision's SSDLite tap instead of the stage output for C4 (the
MobileNetV2-SSDLite paper attaches its first map to that expansion). Trains for the given epochs with the
demo's recipe on 1 thread, prints the steps, seconds and val metrics. Results: benchmarks/README.md.
"""
import json
import sys
import time
from collections import OrderedDict

import torch
from torch import nn

from nasdet.config import load_config
from nasdet.data.build import build_datasets
from nasdet.models.backbones import build_backbone
from nasdet.models.detectors import build_detector
from nasdet.train.loop import Trainer


class ExpansionTap(nn.Module):
    """An exported OFA subnet whose C4 is the expansion output of the first stride-32 block."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.out_channels = dict(net.out_channels, c4=net.stages[4][0].layers[0].out_channels)

    def forward(self, x):
        n, out = self.net, OrderedDict()
        x = n.first_block(n.first_conv(x))
        for i, stage in enumerate(n.stages, 1):
            if i == 5:
                y = stage[0].layers[:3](x)  # 1x1 expand, BN, activation
                out["c4"] = y
                x = stage[1:](stage[0].layers[3:](y))  # stride-2 block: no residual
            else:
                x = stage(x)
                if i == 2:
                    out["c3"] = x
        out["c5"] = n.final_expand(x)
        return out


def main(variant: str, epochs: int, *options: str) -> None:
    cfg = load_config("configs/demo/ofa_ssdlite_shapes.yaml")
    model_upd = {"ssd_levels": ["c4", "c5"], "ssd_loss": "hard_negative"}
    train_upd = {"epochs": epochs, "threads": 1, "ckpt_every_steps": 10000}
    if variant not in ("base", "tap"):
        raise SystemExit(f"unknown variant {variant!r}: base or tap")
    for kv in options:
        if "=" not in kv:
            raise SystemExit(f"option {kv!r} is not key=value (levels=, loss=, width=, lr=)")
        k, v = kv.split("=", 1)
        if k == "lr":
            train_upd["optimizer"] = cfg.train.optimizer.model_copy(update={"lr": float(v)})
        elif k == "width":
            model_upd["backbone"] = cfg.model.backbone.model_copy(update={"width_mult": float(v)})
        elif k == "levels":
            model_upd["ssd_levels"] = v.split(",")
        elif k == "loss":
            model_upd["ssd_loss"] = v
        else:
            raise SystemExit(f"unknown option {k!r}")
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=model_upd),
                                 "train": cfg.train.model_copy(update=train_upd)})
    torch.manual_seed(0)
    supernet = build_backbone(cfg.model.backbone)
    net = supernet.export(supernet.search_space().largest())
    body = ExpansionTap(net) if variant == "tap" else net
    data = build_datasets(cfg)
    model = build_detector(cfg.model, num_classes=data["train"].num_classes, backbone=body)
    t = time.time()
    trainer = Trainer.from_config(cfg, model, data["train"], data["val"], f"runs/bench_ssdlite/{variant}_{'_'.join(options)}")
    metrics = trainer.run()
    print(variant, options, "steps", trainer.step, "s", round(time.time() - t), json.dumps(metrics))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
