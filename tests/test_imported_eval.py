"""nasdet's evaluation of an imported detector gives the AP that the reference's own detections get:
the detections are scored as the model returns them (a score rounded to 5 decimals ties low scores
across images, and COCOeval's ranking then differs: AP50 0.0019 against 0.0022 on an untrained model)."""
import pytest
import torch

from test_imports import imported, set_torchvision_size, ssdlite_config, torchvision_ssdlite, trained_like

from nasdet.data.build import build_datasets
from nasdet.data.dataset import to_coco_gt
from nasdet.metrics import coco_evaluate
from nasdet.train.evaluate import evaluate_detector


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@torch.no_grad()
def test_imported_ssdlite320_scores_torchvisions_own_ap(tiny_config, seed):
    torch.manual_seed(seed)
    cfg = tiny_config("ssdlite", model=ssdlite_config(input_size=96).model_dump())
    val = build_datasets(cfg, need=("val",))["val"]
    reference = trained_like(torchvision_ssdlite(val.num_classes + 1))
    set_torchvision_size(reference, 96)
    model = imported(reference, cfg.model, val.num_classes)
    results = []
    for image, target in (val[i] for i in range(len(val))):  # torchvision's model on the same images
        out = reference([image.float() / 255])[0]
        boxes = out["boxes"].clone()
        boxes[:, 2:] -= boxes[:, :2]
        results += [{"image_id": int(target["image_id"]), "category_id": val.category_ids[label - 1], "bbox": box,
                     "score": score} for box, score, label in zip(boxes.tolist(), out["scores"].tolist(),
                                                                  out["labels"].tolist())]
    want = coco_evaluate(to_coco_gt(val), results, backend="pycocotools")
    got = evaluate_detector(model, val, torch.device("cpu"), batch_size=1)
    assert want["AP50"] > 0
    for k in want:
        assert abs(got[k] - want[k]) < 1e-9, (k, got[k], want[k])
