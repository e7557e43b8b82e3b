"""End-to-end predict throughput vs the backbone's own forward throughput, measured in the same run.

    python benchmarks/predict_throughput.py --data mvtec:PATH --category bottle \
        --model patchcore [--param coreset_ratio=0.1] [--repeat 2]

End to end = decode + resize + backbone + model + anomaly maps + image scores (``inference.score_images``),
over the category's test images. Backbone alone = the extractor's forward on the same images, already decoded.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from reconad import inference, pipeline
from reconad.data import load_resized, load_sources
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.params import parse_params
from reconad.runtime import keep_freed_memory


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="FORMAT:PATH")
    parser.add_argument("--category", required=True)
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--param", action="append", default=[])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2, help="timed passes (the best is reported)")
    args = parser.parse_args()

    data = load_sources([args.data], [args.category])
    extractor = FeatureExtractor()
    run = pipeline.fit(
        args.model, data, extractor, params=parse_params(args.param), cache=FeatureCache(extractor.key())
    )
    paths = [s.path for s in data[0].test]
    images = torch.from_numpy(np.stack([load_resized(s, extractor.image_hw)[0] for s in data[0].test]))
    extractor(images[: args.batch_size])  # warm-up

    backbone, end_to_end = 0.0, 0.0
    for _ in range(args.repeat):
        start = time.perf_counter()
        for i in range(0, len(images), args.batch_size):
            extractor(images[i : i + args.batch_size])
        backbone = max(backbone, len(images) / (time.perf_counter() - start))
        start = time.perf_counter()
        scored = inference.score_images(run, extractor, paths, args.category, batch_size=args.batch_size)
        n = sum(1 for _ in scored)
        end_to_end = max(end_to_end, n / (time.perf_counter() - start))
    result = {
        "model": args.model,
        "params": run.config["params"],
        "images": len(paths),
        "threads": torch.get_num_threads(),
        "backbone_images_per_second": round(backbone, 2),
        "end_to_end_images_per_second": round(end_to_end, 2),
        "ratio": round(end_to_end / backbone, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
