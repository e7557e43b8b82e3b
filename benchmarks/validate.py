"""Score a model and its parameters on the training-only validation set: how defaults are chosen.

    python benchmarks/validate.py --data mvtec:PATH [--data ...] [--category C ...] --model sgfr \
        [--param key=value ...] [--foreign] [--seed 0] [--name LABEL] --out DIR

Per category a seeded 10 % of the good *training* images is held out, kept clean and corrupted with known
masks (CutPaste, a brightness blotch; ``--foreign``: also another category's texture, needs two categories);
the model is fitted on the other training images (``reconad.data.validation``, ``reconad.validate``). The
test splits are never read. The criterion: the mean over categories of pixel AUROC and AUPRO, corruptions
pooled. ``--seed`` sets the validation set; the model's own seed is a parameter (``--param seed=1``).

Each invocation adds one row (``--name``, default the model and its parameters) to ``DIR/results.json`` and
rewrites ``DIR/results.md``, a table of every row so far, the best criterion in bold; a folder holding rows
measured with other data, seed or features is refused. Unified models keep per-epoch checkpoints in
``DIR/checkpoints/LABEL`` (``--resume`` continues from them).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from reconad.data import load_sources
from reconad.errors import ReconadError
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.models.base import model_class
from reconad.options import parse_layers
from reconad.params import parse_params
from reconad.pipeline import Training
from reconad.runtime import keep_freed_memory
from reconad.validate import validate, validation_sets


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="FORMAT:PATH; repeatable")
    ap.add_argument("--category", action="append", help="restrict to these categories; repeatable")
    ap.add_argument("--model", required=True, help="patchcore, sgfr, rlr, rlr-selfref, uniad")
    ap.add_argument("--param", action="append", default=[], help="model hyper-parameter key=value")
    ap.add_argument("--foreign", action="store_true", help="add the foreign-texture corruption")
    ap.add_argument("--seed", type=int, default=0, help="the validation set's seed")
    ap.add_argument("--name", help="the row's label (default: the model and its parameters)")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--weights", type=Path, help="backbone weights file (safetensors or state dict)")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--layers", default="2,3")
    ap.add_argument("--resume", action="store_true", help="unified models: continue from the checkpoints")
    ap.add_argument("--out", type=Path, required=True)
    return ap.parse_args()


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    """One row per label: pixel AUROC / AUPRO / image AUROC per category, and the criterion."""
    cats = list(next(iter(rows.values()))["categories"])
    best = max(r["criterion"] for r in rows.values())
    lines = [
        "| row | " + " | ".join(f"{c} px AUROC / AUPRO / img AUROC" for c in cats) + " | criterion |",
        "|---|" + "---|" * len(cats) + "---:|",
    ]
    for label, r in rows.items():
        cells = [
            "{pixel_auroc:.4f} / {pixel_aupro:.4f} / {image_auroc:.4f}".format(**r["categories"][c])
            for c in cats
        ]
        score = f"{r['criterion']:.4f}"
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {'**' + score + '**' if r['criterion'] == best else score} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    keep_freed_memory()  # as the CLI does (reconad.runtime)
    args = arguments()
    params = parse_params(args.param)
    unified = model_class(args.model).unified  # an unknown model fails before any work
    label = args.name or " ".join([args.model, *(f"{k}={json.dumps(v)}" for k, v in params.items())])
    extractor = FeatureExtractor(
        args.backbone, parse_layers(args.layers), args.image_size, weights=args.weights
    )
    settings = {
        "data": args.data,
        "categories": args.category,
        "foreign": args.foreign,
        "seed": args.seed,
        "features": extractor.config(),
    }
    saved = args.out / "results.json"
    doc = json.loads(saved.read_text()) if saved.exists() else {"settings": settings, "rows": {}}
    if doc["settings"] != settings:
        differ = ", ".join(k for k in settings if doc["settings"].get(k) != settings[k])
        raise ReconadError(
            f"{saved} holds rows measured with other settings ({differ} differ): choose another --out"
        )
    data = load_sources(args.data, args.category)
    sets = validation_sets(data, extractor, FeatureCache(extractor.key()), args.seed, args.foreign)
    print(", ".join(f"{c}: {len(s.train)} fit, {len(s.features)} validation images" for c, s in sets.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    training = Training(
        args.out / "checkpoints" / re.sub(r"[^\w.=-]+", "_", label),
        args.resume,
        lambda e, n, loss: print(f"  epoch {e}/{n} loss {loss:.4f}", flush=True),
    )
    row = validate(args.model, sets, extractor, params, training if unified else None)
    doc["rows"][label] = row
    saved.write_text(json.dumps(doc, indent=1))
    (args.out / "results.md").write_text(markdown(doc["rows"]))
    print(f"{label}: criterion {row['criterion']:.4f}")
    print(markdown(doc["rows"]), end="")


if __name__ == "__main__":
    try:
        main()
    except ReconadError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
