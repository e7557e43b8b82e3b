"""The ``reconad`` command line: parse, call the pipeline, print. Errors are one line and exit code 2."""

from __future__ import annotations

import csv
import functools
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reconad import distributed, pipeline
from reconad.atomic import atomic_file
from reconad.data import load_sources
from reconad.data.imageio import collect_images, show_path
from reconad.data.sources import FORMATS
from reconad.errors import ReconadError
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor, check_image_size, check_layers
from reconad.imagefiles import overlay_name
from reconad.metrics import METRIC_KEYS
from reconad.models.base import check_params, describe_params, model_class, model_names
from reconad.params import is_declared
from reconad.progress import progress_display
from reconad.runs import Run, load_run, save_run
from reconad.runtime import keep_freed_memory

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
err = Console(stderr=True)
out = Console()
STATE = {"debug": False, "quiet": False}
F = TypeVar("F", bound=Callable[..., Any])

DataOpt = Annotated[
    list[str],
    typer.Option("--data", "-d", help=f"FORMAT:PATH ({', '.join(FORMATS)}); repeatable"),
]
CategoryOpt = Annotated[
    list[str] | None, typer.Option("--category", "-c", help="restrict to these categories; repeatable")
]
BackboneOpt = Annotated[str, typer.Option(help="timm model name")]
WeightsOpt = Annotated[Path | None, typer.Option(help="backbone weights file (safetensors or state dict)")]
ImageSizeOpt = Annotated[int, typer.Option(help="images are resized to this square size")]
LayersOpt = Annotated[str, typer.Option(help="backbone feature levels")]
HoldoutOpt = Annotated[float, typer.Option(help="fraction of good images held back to set the threshold")]


@app.callback()
def main(
    debug: Annotated[bool, typer.Option(help="show full tracebacks")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """reconad: unsupervised visual anomaly detection and localization (SGFR, RLR, PatchCore, UniAD)."""
    STATE["debug"], STATE["quiet"] = debug, quiet
    keep_freed_memory()


def clean_errors(fn: F) -> F:
    """Turn a :class:`ReconadError` into one red line and exit code 2 (a traceback only with ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ReconadError as error:
            if STATE["debug"]:
                raise
            err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/yellow]: nothing half-written was left behind", soft_wrap=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except OSError as error:  # the file system said no (disk full, permissions, a file in the way)
            if STATE["debug"]:
                raise
            err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as error:  # a bug: say so in one line unless debugging
            if STATE["debug"]:
                raise
            err.print(
                f"[red]internal error:[/red] {type(error).__name__}: {escape(str(error))} "
                "(rerun with --debug for details)",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bars(quiet: bool = False) -> Iterator[pipeline.Progress]:
    """Progress on stderr (:mod:`reconad.progress`): bars on a terminal, lines in a log; none if quiet."""
    with progress_display(err, quiet=quiet or STATE["quiet"]) as update:
        yield update


def parse_params(values: list[str] | None) -> dict[str, str]:
    """``key=value`` pairs of ``--param``, values as typed."""
    params: dict[str, str] = {}
    for item in values or []:
        if "=" not in item:
            raise ReconadError(f"--param {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        params[key.strip()] = raw
    return params


def model_params(name: str, raw: dict[str, str]) -> dict[str, Any]:
    """The ``--param`` values of model ``name``, checked and converted before any work: by the model's
    declarations (:mod:`reconad.params`), or, for a model without them, read as JSON where they parse."""
    cls = model_class(name)
    values: dict[str, Any] = dict(raw) if is_declared(cls) else {k: _json_or_text(v) for k, v in raw.items()}
    return check_params(name, values)


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def make_cache(no_cache: bool, cache_dir: Path | None, extractor: FeatureExtractor) -> FeatureCache | None:
    return None if no_cache else FeatureCache(extractor.key(), cache_dir)


def metrics_table(doc: dict[str, Any], title: str, first: str = "category") -> Table:
    """The five metrics per row of ``doc["categories"]``, and ``doc["mean"]`` when there is one."""
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


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename)."""
    with atomic_file(path) as f:
        json.dump(doc, f, indent=2)


def check_output(path: Path, *, folder: bool) -> None:
    """Fail before any work when ``path`` cannot become a folder (``folder``) or a file."""
    if path.exists() and path.is_dir() != folder:
        raise ReconadError(f"{show_path(path)} exists and is {'not a folder' if folder else 'a folder'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ReconadError(f"cannot write {show_path(path)}: {show_path(parent)} is not a folder")
            break


def parse_layers(layers: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in layers.split(","))
    except ValueError:
        raise ReconadError(f"--layers {layers!r}: expected comma-separated integers, e.g. 2,3") from None
    return check_layers(values, "--layers")


def check_feature_options(image_size: int, layers: str) -> tuple[int, ...]:
    """``--image-size`` and ``--layers`` checked before any work; returns the layers."""
    check_image_size(image_size, "--image-size")
    return parse_layers(layers)


def checkpoint_dir(run_dir: Path) -> Path:
    """Where unified models keep per-epoch checkpoints until the run is saved."""
    return run_dir.with_name(f".{run_dir.name}.checkpoints")


def do_fit(
    model: str,
    data: list[str],
    categories: list[str] | None,
    out_dir: Path,
    *,
    backbone: str,
    weights: Path | None,
    image_size: int,
    layers: str,
    params: dict[str, Any],
    seed: int,
    holdout: float,
    cache_dir: Path | None,
    no_cache: bool,
    resume: bool,
    device: str,
) -> Run:
    cls = model_class(model)  # unknown model, bad parameter or option: error before any work
    params = pipeline.check_fit_options(model, params, holdout, seed, prefix="--")
    levels = check_feature_options(image_size, layers)
    if out_dir.exists() and not (out_dir / "run.json").is_file():
        raise ReconadError(f"{out_dir} exists and is not a reconad run: choose another --out")
    check_output(out_dir, folder=True)
    extractor = FeatureExtractor(backbone, levels, image_size, weights=weights, device=device)
    pipeline.new_model(model, params, extractor, seed)  # the parameters together and with the features
    sources = load_sources(data, categories, seed=seed)
    world = distributed.start(device)  # under torchrun: join the job; otherwise None, nothing changes
    main = world is None or world.main
    if distributed.device_for(world, device) != device:  # a CUDA job: each process takes its local GPU
        device = distributed.device_for(world, device)
        extractor = FeatureExtractor(backbone, levels, image_size, weights=weights, device=device)
    fit_kwargs: dict[str, Any] = {}
    ckpt = checkpoint_dir(out_dir)
    if cls.unified:
        fit_kwargs = {"checkpoint_dir": ckpt, "resume": resume}
    bars = progress_bars(quiet=not main)  # rank 0 alone shows progress
    try:
        with bars as progress:
            if cls.unified:
                fit_kwargs["progress"] = lambda epoch, total, loss: progress(
                    "training", epoch, total, f"loss {loss:.4f}", "epochs"
                )
            run = pipeline.fit(
                model,
                sources,
                extractor,
                params=params,
                cache=make_cache(no_cache, cache_dir, extractor),
                holdout=holdout,
                seed=seed,
                progress=progress,
                fit_kwargs=fit_kwargs,
                world=world,
            )
    except distributed.JobStopped as stopped:
        distributed.abandon()
        if not main:  # rank 0 says it, once
            raise typer.Exit(1) from None
        resumable = cls.unified and ckpt.is_dir() and any(ckpt.glob("*-checkpoint.json"))
        hint = f"; the checkpoints in {ckpt} are whole: rerun the same command with --resume"
        raise ReconadError(f"{stopped}{hint if resumable else ''}") from None
    except BaseException:
        distributed.abandon()  # this process's own error: it says it, then ends
        raise
    if main:  # one writer: rank 0 (atomically, as ever)
        save_run(run, out_dir)
        shutil.rmtree(ckpt, ignore_errors=True)
    distributed.stop()
    return run


@app.command()
@clean_errors
def fit(
    model: Annotated[str, typer.Argument(help="patchcore, sgfr, rlr, rlr-selfref, uniad")],
    data: DataOpt,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run folder to write")],
    category: CategoryOpt = None,
    backbone: BackboneOpt = "tf_efficientnet_lite0",
    weights: WeightsOpt = None,
    image_size: ImageSizeOpt = 256,
    layers: LayersOpt = "2,3",
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", help="model hyper-parameter key=value; `reconad params MODEL` lists them"
        ),
    ] = None,
    seed: int = 0,
    holdout: HoldoutOpt = 0.1,
    cache_dir: Annotated[Path | None, typer.Option(help="feature cache (default ~/.cache/reconad)")] = None,
    no_cache: Annotated[bool, typer.Option(help="do not read or write the feature cache")] = False,
    resume: Annotated[
        bool, typer.Option(help="unified models: continue from the last finished epoch")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
) -> None:
    """Fit a model on the good training images of every category found."""
    run = do_fit(
        model,
        data,
        category,
        out_dir,
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        layers=layers,
        params=model_params(model, parse_params(param)),
        seed=seed,
        holdout=holdout,
        cache_dir=cache_dir,
        no_cache=no_cache,
        resume=resume,
        device=device,
    )
    if (distributed.launched() or (0,))[0] != 0:
        return  # the other processes of a torchrun job stay quiet
    out.print(
        f"fitted [bold]{model}[/bold] on {escape(', '.join(run.categories))} "
        f"in {run.config['fit_seconds']:.1f} s → {escape(str(out_dir))} "
        f"({run.config['model_bytes'] / 1e6:.2f} MB of weights)",
        soft_wrap=True,
    )


@app.command("params")
@clean_errors
def list_params(
    model: Annotated[str | None, typer.Argument(help="a model name; every model if left out")] = None,
) -> None:
    """List a model's hyper-parameters (for --param key=value): the values each takes, default, use."""
    for name in [model] if model else model_names():
        table = Table(title=f"{name}: --param key=value", title_justify="left")
        for column in ("parameter", "values", "default", "what it does"):
            table.add_column(column, overflow="fold")
        for row in describe_params(name):
            table.add_row(*map(escape, row))
        out.print(table)


def do_test(
    run_dir: Path,
    data: list[str] | None,
    categories: list[str] | None,
    *,
    cache_dir: Path | None = None,
    no_cache: bool = True,
    device: str = "cpu",
    by_defect: bool = False,
) -> tuple[Run, dict[str, pipeline.CategoryResult], dict[str, Any]]:
    run = load_run(run_dir)
    specs = data or sorted({c["source"] for c in run.categories.values()})
    sources = load_sources(specs, categories or list(run.categories))
    extractor = FeatureExtractor.from_config(run.config["features"], device)
    with progress_bars() as progress:
        results = pipeline.evaluate(
            run, sources, extractor, cache=make_cache(no_cache, cache_dir, extractor), progress=progress
        )
    return run, results, pipeline.results_json(run, results, by_defect)


@app.command()
@clean_errors
def test(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `reconad fit`")],
    data: Annotated[
        list[str] | None, typer.Option("--data", "-d", help="override the run's data sources")
    ] = None,
    category: CategoryOpt = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="write the metrics here")] = None,
    report: Annotated[Path | None, typer.Option(help="write an HTML report into this folder")] = None,
    by_defect: Annotated[
        bool, typer.Option("--by-defect", help="also the metrics per defect type (good images + that type)")
    ] = False,
    device: str = "cpu",
) -> None:
    """Score the test split of each category and print image/pixel AUROC, AUPRO, F1-max and AP."""
    if json_file:
        check_output(json_file, folder=False)
    if report:
        check_output(report, folder=True)
    run, results, doc = do_test(run_dir, data, category, device=device, by_defect=by_defect)
    out.print(metrics_table(doc, f"{doc['model']} · {doc['backbone']} · {doc['image_size']} px"))
    for name, m in doc["categories"].items() if by_defect else ():
        by_type = {"categories": m["defect_types"]}
        if by_type["categories"]:  # a category without defective test images has no types to show
            title = f"{escape(name)} · each defect type with the good images"
            out.print(metrics_table(by_type, title, "defect"))
    for name, m in doc["categories"].items():
        for note in m.get("notes", []):
            out.print(f"[yellow]note[/yellow] {escape(name)}: {escape(note)}", soft_wrap=True)
    out.print(f"predict: {doc['predict_images_per_second']:.1f} images/s end to end")
    if json_file:
        write_json(json_file, doc)
        out.print(f"metrics → {escape(str(json_file))}", soft_wrap=True)
    if report:
        from reconad.report.html import write_report

        page = write_report(report, run.config, results, doc)
        out.print(f"report → {escape(str(page))}", soft_wrap=True)


@app.command()
@clean_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `reconad fit`")],
    inputs: Annotated[list[Path], typer.Argument(help="images or folders of images")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="folder for overlays and scores.csv")],
    category: Annotated[
        str | None, typer.Option(help="which category's model (needed if the run has several)")
    ] = None,
    device: str = "cpu",
) -> None:
    """Score new images: a heat-map overlay per image and scores.csv (path, score, is_anomalous)."""
    from reconad.report.overlay import overlay_png

    run = load_run(run_dir)
    if category is None:
        if len(run.categories) > 1:
            raise ReconadError(
                f"the run has several categories ({', '.join(run.categories)}): pass --category"
            )
        category = next(iter(run.categories))
    if category not in run.categories:
        raise ReconadError(f"the run has no category {category!r} (it has {', '.join(run.categories)})")
    check_output(out_dir, folder=True)
    paths = collect_images(inputs)
    extractor = FeatureExtractor.from_config(run.config["features"], device)
    cat = run.categories[category]
    out_dir.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    taken: set[str] = set()
    batch: list[pipeline.Scored] = []
    batch_size, n_scored, n_bad = 16, 0, 0

    def render(scored: pipeline.Scored) -> bytes:
        return overlay_png(scored.image, scored.map, cat["threshold"], cat["normal_level"])

    def write_batch(rows: Any) -> None:  # overlays encode on every core, between backbone forwards
        nonlocal n_scored, n_bad
        for scored, png in zip(batch, pipeline.map_on_cores(render, batch)):
            name = overlay_name(Path(scored.path), taken)
            with atomic_file(out_dir / name, "wb") as f:
                f.write(png)
            rows.writerow((scored.path, f"{scored.score:.6g}", int(scored.is_anomalous), name))
            n_scored, n_bad = n_scored + 1, n_bad + int(scored.is_anomalous)
        batch.clear()

    start = time.perf_counter()
    # Rows go to scores.csv as they come (nothing per image is kept in memory); the file appears under its
    # name only once every image is scored.
    csv_args = {"newline": "", "encoding": "utf-8", "errors": "surrogateescape"}
    with atomic_file(out_dir / "scores.csv", "w", **csv_args) as f, progress_bars() as progress:
        rows = csv.writer(f)
        rows.writerow(["path", "score", "is_anomalous", "overlay"])
        for scored in pipeline.score_images(
            run,
            extractor,
            paths,
            category,
            batch_size=batch_size,
            on_error=lambda p, m: failures.append((p, m)),
            progress=progress,
        ):
            batch.append(scored)
            if len(batch) == batch_size:  # a batch scored: its overlays encode before the next forward
                write_batch(rows)
        write_batch(rows)
    seconds = time.perf_counter() - start
    out.print(
        f"scored {n_scored} images ({n_bad} anomalous at threshold {cat['threshold']:.4g}) "
        f"in {seconds:.1f} s ({n_scored / seconds:.1f} images/s) → {escape(str(out_dir / 'scores.csv'))}",
        soft_wrap=True,
    )
    for _, message in failures:
        err.print(f"[red]skipped[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if failures:
        err.print(f"[red]{len(failures)} of {len(paths)} images could not be read[/red]")
        raise typer.Exit(1)


@app.command()
@clean_errors
def serve(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `reconad fit`")],
    host: Annotated[str, typer.Option(help="address to bind (loopback unless told otherwise)")] = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="processes, each loading the run once")] = 1,
    max_upload_mb: Annotated[float, typer.Option(help="largest request body accepted")] = 20,
    api_key_env: Annotated[
        str | None, typer.Option(help="environment variable holding the key /v1/* requires (Bearer)")
    ] = None,
) -> None:
    """Serve a run over HTTP: POST /v1/predict, GET /v1/model, GET /healthz and an inspection page at /."""
    from reconad.serve.server import serve as serve_run

    serve_run(
        run_dir,
        host=host,
        port=port,
        workers=workers,
        max_upload_mb=max_upload_mb,
        api_key_env=api_key_env,
        warn=lambda message: err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True),
    )


@app.command()
@clean_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `reconad fit`")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="export folder to write")],
    category: CategoryOpt = None,
) -> None:
    """Export a run as ONNX graphs + manifest + predict.py: a folder that scores images without PyTorch."""
    from reconad.export.writer import export_run

    with progress_bars() as progress:
        doc = export_run(run_dir, out_dir, category, progress)
    size = sum(g["bytes"] for g in doc["graphs"].values()) / 1e6
    out.print(
        f"exported [bold]{doc['model']}[/bold] ({escape(', '.join(doc['categories']))}) → "
        f"{escape(str(out_dir))}: {len(doc['graphs'])} graph(s), {size:.1f} MB, ONNX opset {doc['opset']}; "
        f"run it with: python {escape(str(out_dir / 'predict.py'))} IMAGES --out DIR",
        soft_wrap=True,
    )


@app.command()
@clean_errors
def demo(
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help="run on real data instead")] = None,
    category: CategoryOpt = None,
    model: Annotated[str, typer.Option(help="which model to fit")] = "patchcore",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where the demo writes")] = Path(
        "reconad-demo"
    ),
) -> None:
    """Fit, test and draw overlays end to end: on generated parts (offline, no data needed) or on --data."""
    from reconad.data.synthetic import make_parts

    start = time.perf_counter()
    if not data:
        part = make_parts(out_dir / "data", n_train=60, n_test_good=12, n_test_bad=24, size=192, seed=0)
        out.print(f"generated synthetic parts with drawn defects → {part.parent}")
        data = [f"mvtec:{part.parent}"]
    run_dir = out_dir / f"run-{model}"
    do_fit(
        model,
        data,
        category,
        run_dir,
        backbone="tf_efficientnet_lite0",
        weights=None,
        image_size=256,
        layers="2,3",
        params={},
        seed=0,
        holdout=0.1,
        cache_dir=None,
        no_cache=False,
        resume=False,
        device="cpu",
    )
    run, results, doc = do_test(run_dir, data, category)
    write_json(out_dir / "metrics.json", doc)
    out.print(metrics_table(doc, f"demo: {model} on {', '.join(doc['categories'])}"))
    from PIL import Image

    from reconad.report.overlay import heatmap_overlay, mask_outline

    overlays = out_dir / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    for name, r in results.items():
        cat = run.categories[name]
        for i in [*range(len(r.samples))][:: max(1, len(r.samples) // 8)]:
            from reconad.data import load_resized

            image, _ = load_resized(r.samples[i], r.maps.shape[-1])
            picture = mask_outline(
                heatmap_overlay(image, r.maps[i], cat["threshold"], cat["normal_level"]), r.masks[i]
            )
            file = overlays / f"{name}_{r.samples[i].defect}_{r.samples[i].path.stem}.png"
            with atomic_file(file, "wb") as f:
                Image.fromarray(picture).save(f, format="PNG")
    out.print(f"overlays (ground truth outlined in red) → {overlays}")
    out.print(
        f"done in {time.perf_counter() - start:.0f} s · run → {run_dir} · "
        f"metrics → {out_dir / 'metrics.json'}"
    )


@app.command()
@clean_errors
def bench(
    model: Annotated[list[str], typer.Option("--model", "-m", help="models to compare; repeatable")],
    data: DataOpt,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="folder for results.json, results.md, report.html")
    ],
    category: CategoryOpt = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="MODEL.key=value; repeatable; `reconad params MODEL` lists them"),
    ] = None,
    seed: int = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="feature cache (default ~/.cache/reconad)")] = None,
    device: str = "cpu",
    backbone: BackboneOpt = "tf_efficientnet_lite0",
    weights: WeightsOpt = None,
    image_size: ImageSizeOpt = 256,
    layers: LayersOpt = "2,3",
    holdout: HoldoutOpt = 0.1,
) -> None:
    """Fit and test every model on every category on shared features; write a results table and report."""
    from reconad.bench import run_bench

    raw: dict[str, dict[str, str]] = {}
    for key, value in parse_params(param).items():
        name, _, field = key.partition(".")
        if not field:
            raise ReconadError(f"--param {key}: expected MODEL.key=value")
        raw.setdefault(name, {})[field] = value
    params = {name: model_params(name, values) for name, values in raw.items()}
    for name in model:
        pipeline.check_fit_options(name, params.get(name, {}), holdout, seed, prefix="--")
    levels = check_feature_options(image_size, layers)
    with progress_bars() as progress:
        md = run_bench(
            model,
            data,
            category,
            out_dir,
            params=params,
            seed=seed,
            cache_dir=cache_dir,
            device=device,
            progress=progress,
            backbone=backbone,
            weights=weights,
            layers=levels,
            image_size=image_size,
            holdout=holdout,
        )
    print(md)
    out.print(f"results → {out_dir}")


def run() -> None:
    """Console-script entry point."""
    app(prog_name="reconad")


if __name__ == "__main__":
    sys.exit(run())
