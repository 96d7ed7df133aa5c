"""Region features for AnANet (paper 004, DESIGN 3.4).

- ``RegionFeatureExtractor``: the 1024-d box-head features of the regions a torchvision Faster
  R-CNN (``fasterrcnn_resnet50_fpn``) detects, Kr = 36 per image. The regions are the detections,
  best first, topped up with the best remaining RPN proposals when fewer than Kr survive the
  detector's NMS, and with the whole image when even those run out, so every image yields exactly
  Kr rows. It needs detector weights from a local file; with random weights the features mean
  nothing.
- ``GridRegionFeatureExtractor``: the cells of the last convolutional map of the pretrained
  EfficientNet-Lite0 that mmfast ships, one 1280-d "region" per cell (Kr = ceil(size / 32)^2).
  Grid features stand in well for detector regions (Jiang et al., "In Defense of Grid Features
  for Visual Question Answering", CVPR 2020), and they need no weights beyond the packaged ones.
"""

import math
import os

import torch

from mmfast.defaults import REGION_IMAGE_SIZE
from mmfast.features.image import PACKAGED, ImageFeatureExtractor, load_state_dict


class RegionFeatureExtractor(torch.nn.Module):
    """``extractor(images) -> (features [B, Kr, 1024], boxes [B, Kr, 4])``.

    images: a float tensor [B, 3, H, W] or a list of [3, H, W], values in [0, 1]. ``weights``:
    a local state-dict file of ``fasterrcnn_resnet50_fpn`` (a ``.pth`` read with
    ``weights_only=True``, or ``.safetensors``), or None for random weights (tests). Images are
    resized so the shorter side is ``image_size`` (the paper resizes to 224).
    """

    def __init__(self, weights: str | os.PathLike | None = None, num_regions: int = 36,
                 image_size: int = 224):
        super().__init__()
        # torchvision is imported here, not at module level: `import mmfast` reaches this module
        # and would otherwise pay torchvision's ~2 s import for users who never extract regions.
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        self.num_regions = num_regions
        self.detector = fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=image_size, max_size=image_size * 2,
            box_detections_per_img=num_regions, box_score_thresh=0.0)
        if weights is not None:
            self.detector.load_state_dict(load_state_dict(weights))
        self.eval()

    @torch.no_grad()
    def forward(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        images = list(images)
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, _ = self.detector.transform(images)
        feature_maps = self.detector.backbone(batch.tensors)
        proposals, _ = self.detector.rpn(batch, feature_maps)
        detections, _ = self.detector.roi_heads(feature_maps, proposals, batch.image_sizes)
        boxes = [self._pick_regions(d["boxes"], p, size)
                 for d, p, size in zip(detections, proposals, batch.image_sizes)]
        pooled = self.detector.roi_heads.box_roi_pool(feature_maps, boxes, batch.image_sizes)
        features = self.detector.roi_heads.box_head(pooled)  # [B * Kr, 1024]
        # Boxes back in the coordinates of the images as given.
        from torchvision.models.detection.transform import resize_boxes

        scaled = [
            resize_boxes(b, size, original)
            for b, size, original in zip(boxes, batch.image_sizes, original_sizes)
        ]
        return features.view(len(images), self.num_regions, -1), torch.stack(scaled)

    def _pick_regions(self, detected: torch.Tensor, proposals: torch.Tensor, image_size):
        height, width = image_size
        whole_image = detected.new_tensor([[0.0, 0.0, width, height]])
        candidates = torch.cat([detected, proposals, whole_image.expand(self.num_regions, 4)])
        return candidates[: self.num_regions]


class GridRegionFeatureExtractor(ImageFeatureExtractor):
    """``extractor(paths)`` -> [N, Kr, 1280] float32 numpy: EfficientNet-Lite0's last
    convolutional map (ImageNet weights), cell by cell in row-major order.

    The cells are not normalized: unlike a pooled image vector, a cell's magnitude says how much
    is there (an emoji's empty background against its drawing), which AnANet's attention can use.
    """

    def __init__(self, image_size: int = REGION_IMAGE_SIZE, batch_size: int = 64,
                 device: str | torch.device = "cpu", precision: str = "fp32"):
        super().__init__("efficientnet_lite0", PACKAGED, image_size, batch_size, device,
                         precision=precision)
        side = math.ceil(image_size / 32)  # EfficientNet's total stride, "same" padding
        self.num_regions = side * side
        self.feature_shape = (self.num_regions, self.dim)

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Cell features [B, Kr, 1280] of images [B, 3, H, W] in [0, 1]."""
        cells = self.trunk.feature_map(self.normalize(images))
        return cells.float().flatten(2).transpose(1, 2)

    def config(self) -> dict:
        return {**super().config(), "regions": "grid", "num_regions": self.num_regions}


class DetectorRegionFeatureExtractor(ImageFeatureExtractor):
    """``extractor(paths)`` -> [N, Kr, 1024] float32 numpy: ``RegionFeatureExtractor``'s
    detected regions, with the interface of the other extractors (``mmfast features --regions
    detector --weights FILE``). Images are read square at ``image_size`` px."""

    def __init__(self, weights: str | os.PathLike | None, num_regions: int = 36,
                 image_size: int = 224, batch_size: int = 16,
                 device: str | torch.device = "cpu"):
        # not ImageFeatureExtractor.__init__: there is no pooled backbone to build
        self.device = torch.device(device)
        self.detector = RegionFeatureExtractor(weights, num_regions, image_size).to(self.device)
        self.weights = None if weights is None else str(weights)
        self.backbone = "fasterrcnn_resnet50_fpn"
        self.image_size, self.batch_size = image_size, batch_size
        self.num_regions, self.dim = num_regions, 1024
        self.feature_shape = (num_regions, self.dim)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Region features [B, Kr, 1024] of images [B, 3, H, W] in [0, 1]."""
        return self.detector(images.to(self.device, non_blocking=True))[0]

    def config(self) -> dict:
        return {**super().config(), "regions": "detector", "num_regions": self.num_regions,
                "weights": self.weights}


def extractor_from_config(config: dict, device: str | torch.device = "cpu"
                          ) -> ImageFeatureExtractor:
    """The extractor that wrote features of ``config`` (an extractor's ``config()``, as stores
    and checkpoints record it), on ``device``: pooled vectors, grid-cell or detector regions."""
    if config.get("regions") == "grid":
        return GridRegionFeatureExtractor(config["image_size"], device=device,
                                          precision=config.get("precision", "fp32"))
    if config.get("regions") == "detector":
        return DetectorRegionFeatureExtractor(config["weights"], config["num_regions"],
                                              config["image_size"], device=device)
    return ImageFeatureExtractor(config["backbone"], image_size=config["image_size"],
                                 device=device, precision=config.get("precision", "fp32"))
