"""anomalib's side of ``vs_anomalib.py``: its PatchCore on reconad's backbone weights, its data pipeline fed
reconad's samples, and its metric classes. Needs the ``compare`` extra (``pip install -e '.[compare]'``).

- :func:`patchcore`: ``anomalib.models.Patchcore`` with ``pre_trained=False`` (nothing is downloaded); the
  wheel-shipped weights reconad loads (``reconad.features.backbone``) are copied into the timm
  ``features_only`` model anomalib's ``TimmFeatureExtractor`` builds, and its pre-processor resizes to the
  same size and normalises with the weights' mean and std (0.5 for the Lite models).
- :class:`SamplesDataModule`: an ``AnomalibDataModule`` over reconad :class:`~reconad.data.Sample` lists, so
  both libraries read exactly the same image files (the same training images, the same test split).
- :func:`anomalib_metrics`: image AUROC, pixel AUROC, AUPRO and image F1-max from anomalib's metric classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.metrics import AUPRO, AUROC, F1Max
from anomalib.models import Patchcore
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Normalize, Resize

from reconad.data import Sample
from reconad.features.backbone import create_feature_backbone


def patchcore(
    backbone: str, layers: Sequence[int], image_size: int, coreset_ratio: float, num_neighbors: int = 9
) -> Patchcore:
    """anomalib's PatchCore on reconad's backbone: same weights, levels, input size and normalisation.

    ``layers`` are timm ``out_indices``, as in reconad (``(2, 3)`` = stages 2 and 3 of the Lite models);
    anomalib's extractor takes them as they are. Post-processing, evaluation and visualisation are off: the
    raw anomaly maps and image scores are scored by the caller, as reconad's are.
    """
    features, (mean, std) = create_feature_backbone(backbone, tuple(layers))
    transform = Compose([Resize((image_size, image_size), antialias=True), Normalize(mean=mean, std=std)])
    model = Patchcore(
        backbone=backbone,
        layers=list(layers),
        pre_trained=False,
        coreset_sampling_ratio=coreset_ratio,
        num_neighbors=num_neighbors,
        pre_processor=PreProcessor(transform=transform),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    model.model.feature_extractor.feature_extractor.load_state_dict(features.state_dict())
    return model


class SamplesDataset(AnomalibDataset):
    """An anomalib dataset over reconad samples (segmentation task: images, labels and mask paths)."""

    def __init__(self, samples: Sequence[Sample], split: str, category: str) -> None:
        super().__init__()
        frame = pd.DataFrame(
            {
                "image_path": [str(s.path) for s in samples],
                "label_index": [int(s.label) for s in samples],
                "mask_path": [str(s.mask_path) if s.mask_path and s.label else "" for s in samples],
                "split": split,
            }
        )
        frame.attrs["task"] = TaskType.SEGMENTATION
        self.samples = frame  # anomalib sorts them by image path
        self.category = category


class SamplesDataModule(AnomalibDataModule):
    """The training and test splits as reconad lists them, with anomalib's loaders and batch sizes.

    No validation split: nothing is calibrated on labelled images (post-processing is off).
    """

    def __init__(
        self,
        category: str,
        train: Sequence[Sample],
        test: Sequence[Sample],
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_split_mode="none",
            test_split_mode="from_dir",  # good test images stay in the test split
        )
        self.category = category
        self._train, self._test = list(train), list(test)

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = SamplesDataset(self._train, "train", self.category)
        self.test_data = SamplesDataset(self._test, "test", self.category)


def unit_range(values: np.ndarray) -> torch.Tensor:
    """``values`` scaled to [0, 1] by their min and max (in float64, returned as float32): the same order."""
    v = np.asarray(values, dtype=np.float64)
    low, span = v.min(), v.max() - v.min()
    return torch.from_numpy(((v - low) / (span if span > 0 else 1.0)).astype(np.float32))


def anomalib_metrics(
    labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3
) -> dict[str, float]:
    """``image_auroc, pixel_auroc, pixel_aupro, image_f1_max`` of one test set by anomalib's metric classes
    (``labels [N]``, ``scores [N]``, bool ``masks [N, H, W]``, ``maps [N, H, W]``), updated with the fields
    its Evaluator uses (``pred_score``/``gt_label`` and ``anomaly_map``/``gt_mask``).

    Scores and maps are min-max scaled to [0, 1] first, as anomalib's post-processor does before its
    evaluator: its AUROC and F1-max (torchmetrics curves) apply a sigmoid to any input outside [0, 1], which
    in float32 rounds raw PatchCore distances to ties (image AUROC 0.5 on bottle). The scaling keeps every
    score's rank, so the metrics are those of the raw values.
    """
    image = SimpleNamespace(
        pred_score=unit_range(scores), gt_label=torch.as_tensor(np.asarray(labels, dtype=np.int64))
    )
    pixel = SimpleNamespace(
        anomaly_map=unit_range(maps), gt_mask=torch.as_tensor(np.asarray(masks, dtype=bool)).to(torch.int64)
    )
    image_fields, pixel_fields = ["pred_score", "gt_label"], ["anomaly_map", "gt_mask"]
    metrics = {
        "image_auroc": (AUROC(fields=image_fields), image),
        "image_f1_max": (F1Max(fields=image_fields), image),
        "pixel_auroc": (AUROC(fields=pixel_fields), pixel),
        "pixel_aupro": (AUPRO(fields=pixel_fields, fpr_limit=fpr_limit), pixel),
    }
    out = {}
    for key, (metric, batch) in metrics.items():
        metric.update(batch)
        out[key] = float(metric.compute())
    return out
