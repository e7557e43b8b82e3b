"""The terminal's view of a test: the metrics as rich tables (``reconad test``, ``reconad demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def metrics_table(doc: dict[str, Any], title: str, first: str = "category") -> Table:
    """The five metrics per row of ``doc["categories"]``, and ``doc["mean"]`` when there is one."""
    from reconad.metrics import METRIC_KEYS  # here: the CLI loads this module before any command runs

    table = Table(title=title)
    names = [first, *doc["categories"]]
    table.add_column(first, min_width=max(map(len, names)), no_wrap=True)  # names before numbers squeeze
    for key in METRIC_KEYS:
        table.add_column(key.replace("_", " "), justify="right")
    table.add_column("n", justify="right")

    def cell(v: Any) -> str:
        return "—" if v is None else f"{v:.4f}"

    for name, m in doc["categories"].items():
        table.add_row(escape(name), *(cell(m[k]) for k in METRIC_KEYS), str(m["n_test"]))
    if len(doc["categories"]) > 1 and "mean" in doc:
        table.add_row("[bold]mean[/bold]", *(cell(doc["mean"][k]) for k in METRIC_KEYS), "")
    return table


def print_results(out: Console, doc: dict[str, Any], by_defect: bool = False) -> None:
    """``reconad test``'s tables: the metrics per category, per defect type (``by_defect``), the notes and
    the speed."""
    out.print(metrics_table(doc, f"{doc['model']} · {doc['backbone']} · {doc['image_size']} px"))
    for name, m in doc["categories"].items() if by_defect else ():
        if m["defect_types"]:  # a category without defective test images has no types to show
            title = f"{escape(name)} · each defect type with the good images"
            out.print(metrics_table({"categories": m["defect_types"]}, title, "defect"))
    for name, m in doc["categories"].items():
        for note in m.get("notes", []):
            out.print(f"[yellow]note[/yellow] {escape(name)}: {escape(note)}", soft_wrap=True)
    for name, m in doc["categories"].items():
        out.print(f"{escape(name)}: {verdicts_text(m['verdicts'])}", soft_wrap=True)
    out.print(f"predict: {doc['predict_images_per_second']:.1f} images/s end to end")


def params_table(model: str, rows: list[tuple[str, str, str, str]]) -> Table:
    """``reconad params``: each hyper-parameter's name, valid values, default and use."""
    table = Table(title=f"{model}: --param key=value", title_justify="left")
    for column in ("parameter", "values", "default", "what it does"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*map(escape, row))
    return table


def verdicts_text(v: dict[str, Any]) -> str:
    """``at threshold 3.2: 1/20 good rejected (5.0 %), 0/63 defective passed (0.0 %)``."""
    parts = []
    if v["n_good"]:
        parts.append(f"{v['n_false_reject']}/{v['n_good']} good rejected ({v['false_reject_rate']:.1%})")
    if v["n_defective"]:
        parts.append(f"{v['n_escape']}/{v['n_defective']} defective passed ({v['escape_rate']:.1%})")
    return f"at threshold {v['threshold']:.4g}: " + (", ".join(parts) or "no images")


def exported_text(manifest: dict[str, Any], out_dir: Any) -> str:
    """``reconad export``'s last line: what went where, its size, and how to run it."""
    size = sum(g["bytes"] for g in manifest["graphs"].values()) / 1e6
    return (
        f"exported [bold]{manifest['model']}[/bold] ({escape(', '.join(manifest['categories']))}) → "
        f"{escape(str(out_dir))}: {len(manifest['graphs'])} graph(s), {size:.1f} MB, ONNX opset "
        f"{manifest['opset']}; run it with: python {escape(str(out_dir / 'predict.py'))} IMAGES --out DIR"
    )


def threshold_text(change: Any) -> str:
    """``reconad threshold``'s line: old → new, how it was set, and what it gives."""
    p = change.point
    how = {"conformal": "conformal", "labelled": "conformal on labelled good images", "value": "set by hand"}
    bound = f", false rejects ≤ {p.bound:.1%} on new good parts" if p.bound is not None else ""
    if p.bound is not None and p.target is not None and p.bound > p.target:
        bound += f" (the best {p.n} good images support; {p.target:.1%} asked)"
    return (
        f"{escape(change.category)}: threshold {change.old:.4g} → {p.threshold:.4g} ({how[p.rule]}{bound}; "
        f"scores: {escape(change.scores_from) or 'none'}); {verdicts_text(change.verdicts).split(': ', 1)[1]}"
    )


def added_text(done: Any) -> str:
    """``reconad add``'s line: the images taken, the atoms that joined, the threshold before and after."""
    if not done.n_added:
        known = f"the {done.n_given} images were trained on or added before"
        return f"{escape(done.category)}: {known}: nothing changed"
    return (
        f"{escape(done.category)}: {done.n_added} of {done.n_given} images added in {done.seconds:.1f} s; "
        f"bank {done.atoms_before} → {done.atoms_after} atoms; threshold {done.old_threshold:.4g} → "
        f"{done.point.threshold:.4g} (from {done.point.n} good scores)"
    )


def fitted_text(config: dict[str, Any], out_dir: Any) -> str:
    """``reconad fit``'s line: the model, its categories, the image size, the time, the folder, the
    weights."""
    return (
        f"fitted [bold]{config['model']}[/bold] on {escape(', '.join(config['categories']))} at "
        f"{config['features']['image_size']} px in {config['fit_seconds']:.1f} s → {escape(str(out_dir))} "
        f"({config['model_bytes'] / 1e6:.2f} MB of weights)"
    )


def predicted_text(done: Any, threshold: float, out_dir: Path) -> str:
    """``reconad predict``'s line: images scored, how many anomalous at the threshold, speed, the table."""
    return (
        f"scored {done.n_scored} images ({done.n_anomalous} anomalous at threshold {threshold:.4g}) in "
        f"{done.seconds:.1f} s ({done.n_scored / done.seconds:.1f} images/s) → "
        f"{escape(str(out_dir / 'scores.csv'))}"
    )
