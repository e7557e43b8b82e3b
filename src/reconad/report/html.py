"""The HTML report: metric tables, ROC/PRO curves, score histograms and a gallery of the worst misses.

One page for one run (``reconad test --report``) or several models side by side (``reconad bench``). The
page is plain HTML + CSS (no scripts); its figures are PNG files in a ``report_files-<token>`` folder beside
``report.html``. The folder is complete before the page that points at it replaces the previous page
(``os.replace``), and older asset folders are removed only after that, so a reader never sees a half report
and files of other programs in the same folder are left alone.
"""

from __future__ import annotations

import html
import io
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from reconad import __version__
from reconad.atomic import atomic_file, atomic_folder
from reconad.data import load_resized
from reconad.errors import ReconadError
from reconad.image_runtime import Decoding
from reconad.metrics import DEFAULT_FPR_LIMIT, METRIC_KEYS, UndefinedMetric, pro_curve, roc_curve_points
from reconad.pipeline import CategoryResult
from reconad.report.overlay import heatmap_overlay, mask_outline
from reconad.report.plots import histogram_png, pro_png, roc_png

PAGE = "report.html"
ASSETS_PREFIX = "report_files-"
GALLERY_DEFECTIVE = 5  # lowest-scoring defective images shown per model and category
GALLERY_GOOD = 3  # highest-scoring good images
PANEL_MAX = 256  # gallery panels are at most this many pixels wide
METRIC_NAMES = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "pixel_aupro": "AUPRO@0.3",
    "image_f1_max": "image F1-max (at the best threshold)",
    "pixel_ap": "pixel AP",
}


@dataclass
class ModelReport:
    """One model's part of a report: its run config, per-category results, JSON document and cost figures."""

    label: str
    config: dict[str, Any]
    results: dict[str, CategoryResult]
    doc: dict[str, Any]
    costs: dict[str, str] = field(default_factory=dict)  # column title -> formatted value


def best_labels(values: Mapping[str, float | None], decimals: int = 4) -> set[str]:
    """The keys whose value, rounded to ``decimals``, is the highest (ties all win; ``None`` never does)."""
    rounded = {k: round(v, decimals) for k, v in values.items() if v is not None}
    if not rounded:
        return set()
    top = max(rounded.values())
    return {k for k, v in rounded.items() if v == top}


def fmt(value: float | None) -> str:
    """A metric as shown in tables: 4 decimals, or an em dash when undefined."""
    return "—" if value is None else f"{value:.4f}"


def run_costs(config: dict[str, Any], doc: dict[str, Any]) -> dict[str, str]:
    """The cost columns of a single ``reconad test`` run."""
    speed = doc.get("predict_images_per_second")
    size = doc.get("model_bytes") or config.get("model_bytes")
    return {
        "fit s": f"{config.get('fit_seconds', 0.0):.1f}",
        "model fit s": f"{config.get('model_fit_seconds', 0.0):.1f}",
        "predict img/s": "—" if speed is None else f"{speed:.1f}",
        "model MB": "—" if size is None else f"{size / 1e6:.2f}",
    }


def write_report(
    out_dir: Path, run_config: dict[str, Any], results: dict[str, CategoryResult], doc: dict[str, Any]
) -> Path:
    """Write the report of one run into ``out_dir``; returns the path of ``report.html``."""
    report = ModelReport(run_config["model"], run_config, results, doc, run_costs(run_config, doc))
    return write_reports(out_dir, [report], title=f"reconad · {run_config['model']}")


def write_reports(
    out_dir: Path,
    reports: list[ModelReport],
    *,
    title: str = "reconad report",
    meta: Mapping[str, str] | None = None,
) -> Path:
    """Write one page comparing ``reports`` (one per model) into ``out_dir``; returns its path."""
    if not reports:
        raise ReconadError("nothing to report: no model results")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReconadError(f"{out_dir} exists and is not a folder: choose another report folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    assets_name = f"{ASSETS_PREFIX}{uuid.uuid4().hex[:8]}"
    # the page's block ends last: the new asset folder is in place before the page that points at it
    with (
        atomic_file(out_dir / PAGE, encoding="utf-8") as page,
        atomic_folder(out_dir / assets_name) as assets,
    ):
        page.write(_Page(assets, assets_name).render(reports, title, dict(meta or {})))
    for old in out_dir.glob(f"{ASSETS_PREFIX}*"):
        if old.name != assets_name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return out_dir / PAGE


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def gallery_indices(result: CategoryResult) -> list[int]:
    """Test images worth a look, worst first: the lowest-scoring defective and highest-scoring good ones,
    ordered by how far they sit on the wrong side of the threshold (misses and false alarms lead)."""
    labels, scores = result.labels.astype(bool), result.scores
    bad = [int(i) for i in np.flatnonzero(labels)[np.argsort(scores[labels], kind="stable")]]
    good = [int(i) for i in np.flatnonzero(~labels)[np.argsort(-scores[~labels], kind="stable")]]
    n_bad = min(len(bad), GALLERY_DEFECTIVE + max(0, GALLERY_GOOD - len(good)))
    n_good = min(len(good), GALLERY_DEFECTIVE + GALLERY_GOOD - n_bad)
    chosen = bad[:n_bad] + good[:n_good]
    margin = np.where(labels, scores - result.threshold, result.threshold - scores)
    return sorted(chosen, key=lambda i: (margin[i], i))


class _Page:
    """Builds the page's HTML while writing its figures into ``assets`` (referenced as ``assets_name/``)."""

    def __init__(self, assets: Path, assets_name: str) -> None:
        self.assets, self.assets_name = assets, assets_name
        self._images: dict[tuple[str, int, tuple[int, ...]], tuple[np.ndarray, np.ndarray | None]] = {}

    def _img(self, name: str, data: bytes, alt: str) -> str:
        (self.assets / name).write_bytes(data)
        return f'<img src="{self.assets_name}/{name}" alt="{_esc(alt)}">'

    def render(self, reports: list[ModelReport], title: str, meta: dict[str, str]) -> str:
        first = reports[0].config
        meta = {
            "models": ", ".join(r.label for r in reports),
            "backbone": f"{first['features']['backbone']} · levels {first['features']['layers']} · "
            f"{first['features']['image_size']} px",
            "seed": str(first.get("seed", "")),
            "reconad": __version__,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **meta,
        }
        categories = list(dict.fromkeys(c for r in reports for c in r.results))
        parts = [f"<h1>{_esc(title)}</h1>", _meta_list(meta), "<h2>Metrics</h2>"]
        parts += [_metrics_single(reports[0])] if len(reports) == 1 else _metrics_compare(reports)
        parts += ["<h2>Cost</h2>", _costs_table(reports)]
        parts += [self._category(name, reports) for name in categories]
        return _document(title, "\n".join(parts))

    def _category(self, name: str, reports: list[ModelReport]) -> str:
        have = [r for r in reports if name in r.results]
        rocs, pros, notes = {}, {}, []
        for r in have:
            res = r.results[name]
            try:
                fpr, tpr = roc_curve_points(res.labels, res.scores)
                rocs[r.label] = (fpr, tpr, res.metrics.get("image_auroc"))
            except UndefinedMetric as err:
                notes.append(f"{r.label}: {err}")
            try:
                x, y = pro_curve(res.masks, res.maps, DEFAULT_FPR_LIMIT)
                pros[r.label] = (x, y, res.metrics.get("pixel_aupro"))
            except UndefinedMetric as err:
                notes.append(f"{r.label}: {err}")
        safe = _safe(name)
        figures = []
        if rocs:
            figures.append(self._img(f"{safe}_roc.png", roc_png(rocs, f"{name}: image ROC"), f"{name} ROC"))
        if pros:
            png = pro_png(pros, DEFAULT_FPR_LIMIT, f"{name}: PRO up to FPR {DEFAULT_FPR_LIMIT}")
            figures.append(self._img(f"{safe}_pro.png", png, f"{name} PRO curve"))
        for r in have:
            res = r.results[name]
            png = histogram_png(res.scores, res.labels, res.threshold, f"{r.label} · {name}: image scores")
            figures.append(self._img(f"{safe}_{_safe(r.label)}_hist.png", png, f"{r.label} {name} histogram"))
        parts = [f'<section id="cat-{_esc(safe)}"><h2>{_esc(name)}</h2>']
        for r in have:
            cat = r.config["categories"][name]
            text = operating_text(cat.get("operating", {}), r.results[name].threshold)
            parts.append(f'<p class="operating">{_esc(r.label)}: {_esc(text)}</p>')
        parts += [f'<p class="note">{_esc(n)}</p>' for n in dict.fromkeys(notes)]
        parts.append(f'<div class="figures">{"".join(figures)}</div>')
        parts += [_defect_types(r, name) for r in have if r.doc["categories"][name].get("defect_types")]
        parts += [self._gallery(name, r) for r in have]
        parts.append("</section>")
        return "\n".join(parts)

    def _gallery(self, name: str, report: ModelReport) -> str:
        res = report.results[name]
        cat = report.config["categories"][name]
        rows = []
        for i in gallery_indices(res):
            sample, score = res.samples[i], float(res.scores[i])
            flagged = score > res.threshold
            verdict = {
                (1, True): "caught",
                (1, False): "MISSED",
                (0, True): "FALSE ALARM",
                (0, False): "correct",
            }[(int(res.labels[i]), flagged)]
            strip = self._strip(name, i, res, cat, Decoding.of_features(report.config.get("features", {})))
            file = f"{_safe(name)}_{_safe(report.label)}_{i:04d}.png"
            caption = (
                f"<b>{_esc(verdict)}</b> · {_esc(sample.defect)} · {_esc(sample.path.name)}<br>"
                f"score {score:.4g} vs threshold {res.threshold:.4g}"
            )
            rows.append(
                f"<tr><td class=cap>{caption}</td><td>{self._img(file, strip, sample.path.name)}</td></tr>"
            )
        return (
            f"<h3>{_esc(report.label)} · worst cases</h3>"
            '<table class="gallery"><tr><th></th><th class=cols><span>input</span><span>ground truth</span>'
            "<span>heat map</span><span>predicted mask (ground truth in red)</span></th></tr>"
            + "".join(rows)
            + "</table>"
        )

    def _strip(
        self, name: str, i: int, res: CategoryResult, cat: dict[str, Any], decoding: Decoding
    ) -> bytes:
        """Input | ground truth | heat-map overlay | map > threshold, side by side, as PNG bytes (the input
        decoded as the run decodes it; ``cat``: the category's threshold and normal level)."""
        threshold, normal_level = cat["threshold"], cat["normal_level"]
        hw = tuple(res.maps.shape[-2:])
        key = (name, i, hw)
        if key not in self._images:
            self._images[key] = load_resized(res.samples[i], hw, decoding)
        image, _ = self._images[key]
        gt = res.masks[i].astype(bool)
        amap = res.maps[i]
        predicted = amap > threshold
        grey = np.full((*gt.shape, 3), 40, np.uint8)
        panels = [
            image,
            np.where(gt[..., None], np.uint8(255), grey),
            heatmap_overlay(image, amap, threshold, normal_level),
            mask_outline(np.where(predicted[..., None], np.uint8(255), grey), gt),
        ]
        gap = np.full((hw[0], 4, 3), 255, np.uint8)
        strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
        picture = Image.fromarray(strip)
        if hw[0] > PANEL_MAX:
            scale = PANEL_MAX / hw[0]
            picture = picture.resize((round(strip.shape[1] * scale), PANEL_MAX), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()


def _meta_list(meta: Mapping[str, str]) -> str:
    items = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in meta.items() if v != "")
    return f'<dl class="meta">{items}</dl>'


def _cell(value: float | None, bold: bool) -> str:
    text = fmt(value)
    return f"<td><b>{text}</b></td>" if bold else f"<td>{text}</td>"


def _share(count: int, total: int) -> str:
    return f"{count}/{total} ({count / total:.1%})" if total else "—"


def _verdict_cells(v: Mapping[str, Any] | None) -> str:
    """False rejects and escapes at the run's threshold (:func:`reconad.operating.verdict_rates`)."""
    if not v:
        return "<td></td><td></td>"
    rejects, escapes = _share(v["n_false_reject"], v["n_good"]), _share(v["n_escape"], v["n_defective"])
    return f"<td>{rejects}</td><td>{escapes}</td>"


def operating_text(operating: Mapping[str, Any], threshold: float) -> str:
    """How a category's threshold was set, in one sentence (``run.json``'s ``operating``)."""
    if not operating:
        return f"threshold {threshold:.4g}: the maximum score of the held-back good images"
    if operating["rule"] == "value":
        return f"threshold {threshold:.4g}: set by hand"
    rule = "conformal rule" if operating["rule"] == "conformal" else "conformal rule on labelled good images"
    return (
        f"threshold {threshold:.4g}: {rule} for {operating['target']:.1%} false rejects (bound "
        f"{operating['bound']:.1%}) from {operating['n']} good scores, {operating['scores_from']}"
    )


def _metrics_table(first: str, per_row: dict[str, dict], mean: dict | None = None) -> str:
    """The five metrics and ``n_test`` per row, the verdicts at the run's threshold (false rejects, escapes),
    and a bold ``mean`` row when given."""
    head = "".join(f"<th>{_esc(METRIC_NAMES[k])}</th>" for k in METRIC_KEYS)
    head += "<th>good rejected (at the threshold)</th><th>defective passed (at the threshold)</th>"
    rows = [f"<tr><th>{_esc(first)}</th>{head}<th>n</th></tr>"]
    for name, m in per_row.items():
        cells = "".join(_cell(m.get(k), False) for k in METRIC_KEYS) + _verdict_cells(m.get("verdicts"))
        rows.append(f"<tr><td>{_esc(name)}</td>{cells}<td>{m.get('n_test', '')}</td></tr>")
    if mean is not None:
        cells = "".join(_cell(mean.get(k), True) for k in METRIC_KEYS) + "<td></td><td></td>"
        rows.append(f"<tr class=mean><td>mean</td>{cells}<td></td></tr>")
    return f'<table class="metrics">{"".join(rows)}</table>'


def _metrics_single(report: ModelReport) -> str:
    categories = report.doc["categories"]
    return _metrics_table("category", categories, report.doc["mean"] if len(categories) > 1 else None)


def _defect_types(report: ModelReport, category: str) -> str:
    """``reconad test --by-defect``'s metrics per defect type of one category (good images + that type)."""
    title = f"{report.label}: each defect type with the good images"
    table = _metrics_table("defect type", report.doc["categories"][category]["defect_types"])
    return f"<h3>{_esc(title)}</h3>{table}"


def _metrics_compare(reports: list[ModelReport]) -> list[str]:
    """One table per metric: categories × models plus a mean row, the best value of each row in bold."""
    categories = list(dict.fromkeys(c for r in reports for c in r.doc["categories"]))
    head = "".join(f"<th>{_esc(r.label)}</th>" for r in reports)
    tables = []
    for key in METRIC_KEYS:
        rows = [f"<tr><th>category</th>{head}</tr>"]
        lines = [(c, {r.label: r.doc["categories"].get(c, {}).get(key) for r in reports}) for c in categories]
        lines.append(("mean", {r.label: r.doc["mean"].get(key) for r in reports}))
        for name, values in lines:
            best = best_labels(values)
            cells = "".join(_cell(values[r.label], r.label in best) for r in reports)
            css = " class=mean" if name == "mean" else ""
            rows.append(f"<tr{css}><td>{_esc(name)}</td>{cells}</tr>")
        tables.append(f'<h3>{_esc(METRIC_NAMES[key])}</h3><table class="metrics">{"".join(rows)}</table>')
    return tables


def _costs_table(reports: list[ModelReport]) -> str:
    columns = list(dict.fromkeys(k for r in reports for k in r.costs))
    rows = ["<tr><th>model</th>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"]
    for r in reports:
        cells = "".join(f"<td>{_esc(r.costs.get(c, '—'))}</td>" for c in columns)
        rows.append(f"<tr><td>{_esc(r.label)}</td>{cells}</tr>")
    return f'<table class="metrics">{"".join(rows)}</table>'


CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-top: 12px; } h3 { font-size: 1.05em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; font-size: 0.9em; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; }
table.metrics { border-collapse: collapse; margin: 6px 0 14px; font-size: 0.9em; }
table.metrics td, table.metrics th { border: 1px solid #ddd; padding: 3px 9px; text-align: right; }
table.metrics td:first-child, table.metrics th:first-child { text-align: left; }
tr.mean td { border-top: 2px solid #999; }
.figures img { margin: 4px 8px 4px 0; border: 1px solid #eee; vertical-align: top; }
table.gallery { border-collapse: collapse; font-size: 0.8em; }
table.gallery td { padding: 3px 8px 3px 0; vertical-align: middle; }
table.gallery td.cap { width: 220px; } table.gallery img { max-width: 100%; }
th.cols { display: flex; gap: 4px; text-align: left; font-weight: normal; color: #666; }
th.cols span { flex: 1; max-width: 256px; }
p.note { color: #8a5a00; font-size: 0.9em; }
"""


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
