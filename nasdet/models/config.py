"""Schema of the ``model`` section: the keys every detector family shares, and the backbone and FAD head.

Each family adds its own keys in its adapter (``nasdet.models.families``); ``nasdet.config`` joins them
into one discriminated union on ``detector``, so a key of another family is an error naming it. Pydantic
only (no torch), so the config layer stays light.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic takes ``true`` for an int or float field as 1 (``--set train.epochs=true``): refused."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            kinds = {annotation, *get_args(annotation)}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("expected a number, not a boolean")
        return value


class BackboneConfig(Strict):
    name: str = "mobilenet_v3_large"  # see nasdet.models.backbones.BACKBONES
    width_mult: float = Field(1.0, gt=0)
    norm: Literal["bn", "frozen_bn"] = "bn"
    # torchvision ImageNet weights by name: "imagenet" (torchvision's DEFAULT), "IMAGENET1K_V1", ...
    pretrained: Optional[str] = None
    # a state_dict of the backbone: nasdet's own, torchvision's classification file as it is, or a released
    # supernet of a reference layout
    checkpoint: Optional[str] = None
    # its layout: auto (from the keys), nasdet, or a released supernet's (backbones/checkpoint_formats.py)
    checkpoint_format: Literal["auto", "nasdet", "ofa", "detnas", "spos", "mmrazor"] = "auto"
    # detnas_* only: whose ShuffleNetV2 unit (spos: SinglePathOneShot, the default; detnas: DetNAS's
    # supernets; mmrazor: MMRazor's), so that their released supernets load function-preserving
    layout: Optional[Literal["spos", "detnas", "mmrazor"]] = None
    # MobileNetV3's last stage at half width (its paper's Table 6; torchvision's ssdlite320 trained without
    # an ImageNet backbone, as its COCO weights were); mobilenet_v3_large / _small only
    reduced_tail: bool = False
    # ResNet only: the stem and the first N stages (layer1..N) keep their weights and BN statistics, as
    # MMDetection's frozen_stages (1 in its R-50 configs) and torchvision's trainable_backbone_layers (3 = stem and
    # layer1 frozen, its detectors' default)
    frozen_stages: int = Field(0, ge=0, le=4)

    @model_validator(mode="after")
    def _one_source(self):
        if self.pretrained and self.checkpoint:
            raise ValueError(f"set pretrained ({self.pretrained!r}) or checkpoint ({self.checkpoint!r}), not both: "
                             "each gives every backbone weight")
        return self


class HeadConfig(Strict):
    """FAD's searched towers in the FCOS / RetinaNet head (nasdet.models.heads.fad).

    With ``genotype`` set, both towers are built from it (``num_cells`` cells each); null keeps
    torchvision's standard head. ``search.strategy: darts`` searches a head of ``search_cells`` cells
    of ``search_nodes`` nodes. FAD: C = 96 (128 for X-101), 1 cell of 3 nodes searched, 2 cells trained.
    """

    # genotype.log / genotype.json of a FAD search, "fad_paper" (published), or the json's {box, cls} mapping
    genotype: Optional[Union[str, dict[str, Any]]] = None
    cell_channels: int = Field(96, gt=0)  # C inside each edge (1x1 to C, op, 1x1 back); a multiple of 32
    num_cells: int = Field(2, gt=0)  # cells per tower of the trained head
    search_cells: int = Field(1, gt=0)  # cells per tower while searching
    search_nodes: int = Field(3, gt=0)  # intermediate nodes per cell while searching
    decouple: bool = True  # FAD's 1x1 conv on the shared trunk's shallow outputs while searching

    @field_validator("cell_channels")
    @classmethod
    def _group_norm(cls, v):
        if v % 32:
            raise ValueError(f"cell_channels must be a multiple of 32 (GroupNorm(32)), got {v}")
        return v


class BaseModelConfig(Strict):
    """Keys of every family. A family's config subclasses this with ``detector`` as a Literal of its names."""

    detector: str
    backbone: BackboneConfig = BackboneConfig()
    num_classes: Optional[int] = Field(None, gt=0)  # object classes, no background; default: from the data
    input_size: int = Field(320, ge=32)  # images are resized to input_size x input_size
    score_thresh: float = Field(0.01, ge=0, le=1)
    nms_thresh: float = Field(0.5, gt=0, le=1)
    detections_per_img: int = Field(100, gt=0)


class FPNModelConfig(BaseModelConfig):
    """RetinaNet and FCOS: an FPN (P3-P7) and a dense head that FAD's searched towers can replace."""

    fpn_channels: int = Field(256, gt=0)
    topk_candidates: int = Field(300, gt=0)  # per level, before NMS
    head: HeadConfig = HeadConfig()  # FAD towers

    @model_validator(mode="after")
    def _fad_group_norm(self):
        # P7 is 1x1 up to 128 px; GroupNorm(32) over 32 channels would normalise single values there
        # (zero output, and an error for a batch of one image, e.g. in ONNX export).
        if self.head.genotype is not None and self.head.cell_channels == 32 and self.input_size <= 128:
            raise ValueError(f"model.head.cell_channels 32 with input_size {self.input_size}: GroupNorm(32) on the "
                             "1x1 P7 map normalises single values; use cell_channels >= 64 or input_size > 128")
        return self
