"""Report figures as PNG bytes: ROC and PRO curves (several models per figure) and a score histogram.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by the Agg canvas directly, so no
pyplot state or GUI backend is touched (safe in threads and on headless machines).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: label -> (x, y, area) of one curve
Curves = Mapping[str, tuple[np.ndarray, np.ndarray, float | None]]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _area(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def roc_png(curves: Curves, title: str) -> bytes:
    """Image-level ROC curves (FPR → TPR) with the chance diagonal; the legend gives each AUROC."""
    fig = Figure(figsize=(4.2, 3.8))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.75", linestyle=":", linewidth=1)
    for label, (fpr, tpr, area) in curves.items():
        ax.plot(fpr, tpr, linewidth=1.6, label=f"{label} ({_area(area)})", drawstyle="steps-post")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def pro_png(curves: Curves, fpr_limit: float, title: str) -> bytes:
    """Per-region-overlap curves up to ``fpr_limit``; the legend gives each normalised AUPRO."""
    fig = Figure(figsize=(4.2, 3.8))
    ax = fig.add_subplot()
    for label, (fpr, pro, area) in curves.items():
        ax.plot(fpr, pro, linewidth=1.6, label=f"{label} ({_area(area)})")
    ax.set(xlim=(0, fpr_limit), ylim=(0, 1.02), xlabel="false positive rate (pixels)", ylabel="PRO")
    ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def histogram_png(scores: np.ndarray, labels: np.ndarray, threshold: float, title: str) -> bytes:
    """Image scores of good vs defective test images on shared bins, with the decision threshold."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    fig = Figure(figsize=(4.2, 3.0))
    ax = fig.add_subplot()
    low, high = min(scores.min(initial=threshold), threshold), max(scores.max(initial=threshold), threshold)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 31)
    for mask, name, colour in ((~labels, "good", "tab:green"), (labels, "defective", "tab:red")):
        if mask.any():
            ax.hist(scores[mask], bins=bins, alpha=0.6, color=colour, label=f"{name} ({int(mask.sum())})")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3g}")
    ax.set(xlabel="image score", ylabel="images")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
