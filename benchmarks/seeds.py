"""Mean ± spread over seeds of several ``reconad bench`` results: one row per model, the mean over categories
of each metric, averaged over the benches (seeds) that hold the model.

    python benchmarks/seeds.py BENCH_DIR [BENCH_DIR ...] [--json OUT.json]

Each BENCH_DIR is a ``reconad bench --seed S --out BENCH_DIR`` folder (its ``results.json``). The spread is
the sample standard deviation over seeds (shown for two seeds or more). Benches of other data, features or
parameters are refused: only the seed may differ, in the bench's arguments and in each model's parameters as
fitted (a bench made before a default changed is not averaged with one made after).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")
SAME = ("data", "categories", "params", "backbone", "weights", "layers", "image_size", "holdout")


def load(folder: Path) -> dict[str, Any]:
    doc = json.loads((folder / "results.json").read_text())
    if "reconad_bench" not in doc:
        raise SystemExit(f"{folder}: not a reconad bench folder")
    return doc


def rows(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: its seeds and, per metric, the category-mean of each seed."""
    first = docs[0]["meta"]["arguments"]
    for doc in docs[1:]:
        args = doc["meta"]["arguments"]
        other = [k for k in SAME if args.get(k) != first.get(k)]
        if other or doc["meta"]["features"] != docs[0]["meta"]["features"]:
            raise SystemExit(f"benches differ in more than the seed: {other or ['features']}")
    out: dict[str, dict[str, Any]] = {}
    first_params: dict[str, dict[str, Any]] = {}  # each model's parameters but its seed, as first met
    for doc in docs:
        for name, result in doc["models"].items():
            params = {k: v for k, v in result["params"].items() if k != "seed"}
            known = first_params.setdefault(name, params)
            other = sorted(k for k in params.keys() | known.keys() if params.get(k) != known.get(k))
            if other:
                raise SystemExit(f"{name}: benches fitted it with different parameters: {other}")
            row = out.setdefault(name, {"seeds": [], **{m: [] for m in METRICS}, "fit_seconds": []})
            row["seeds"].append(doc["meta"]["seed"])
            for m in METRICS:
                row[m].append(result["mean"][m])
            row["fit_seconds"].append(result["fit_seconds"])
    return out


def cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"


def markdown(table: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model | seeds | " + " | ".join(METRICS) + " | fit s (mean) |",
        "|---|---|" + "---:|" * (len(METRICS) + 1),
    ]
    for name, row in table.items():
        seeds = ", ".join(map(str, row["seeds"]))
        cells = " | ".join(cell(row[m]) for m in METRICS)
        lines.append(f"| {name} | {seeds} | {cells} | {statistics.fmean(row['fit_seconds']):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benches", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args()
    table = rows([load(b) for b in args.benches])
    print(markdown(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    sys.exit(main())
