"""The ``reconad`` command line: parse, call the pipeline, print. Errors are one line and exit code 2."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from reconad.atomic import check_writable, write_json
from reconad.options import DEFAULTS, FitOptions
from reconad.params import parse_params
from reconad.report import console as show
from reconad.terminal import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_LAYERS,
    STATE,
    BackboneOpt,
    BitDepthOpt,
    CacheDirOpt,
    CategoryOpt,
    DataOpt,
    DeviceOpt,
    FalseRejectOpt,
    ForceOpt,
    HoldoutOpt,
    ImageSizeOpt,
    KeepAspectOpt,
    LayersOpt,
    MaxPixelsOpt,
    MemoryBudgetOpt,
    NoCacheOpt,
    OneCategoryOpt,
    ParamOpt,
    ResumeOpt,
    RunOpt,
    ScaleOpt,
    TileOpt,
    TileOverlapOpt,
    UnifiedOpt,
    WeightsOpt,
    clean_errors,
    err,
    out,
    progress_bars,
    warn,
)

if TYPE_CHECKING:
    from reconad.pipeline import CategoryResult
    from reconad.runs import Run

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def main(
    debug: Annotated[bool, typer.Option(help="show full tracebacks")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """reconad: unsupervised visual anomaly detection and localization (SGFR, RLR, PatchCore, UniAD)."""
    from reconad.runtime import keep_freed_memory

    STATE["debug"], STATE["quiet"] = debug, quiet
    keep_freed_memory()


@app.command()
@clean_errors
def fit(
    model: Annotated[str, typer.Argument(help="patchcore, sgfr, rlr, rlr-selfref, uniad")],
    data: DataOpt,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run folder to write")],
    category: CategoryOpt = None,
    backbone: BackboneOpt = DEFAULTS.backbone,
    weights: WeightsOpt = DEFAULTS.weights,
    image_size: ImageSizeOpt = DEFAULT_IMAGE_SIZE,
    keep_aspect: KeepAspectOpt = DEFAULTS.keep_aspect,
    layers: LayersOpt = DEFAULT_LAYERS,
    bit_depth: BitDepthOpt = DEFAULTS.bit_depth,
    max_pixels: MaxPixelsOpt = DEFAULTS.max_pixels,
    param: ParamOpt = None,
    seed: int = DEFAULTS.seed,
    holdout: HoldoutOpt = DEFAULTS.holdout,
    false_reject: FalseRejectOpt = DEFAULTS.false_reject,
    memory_budget: MemoryBudgetOpt = DEFAULTS.memory_budget,
    tile: TileOpt = DEFAULTS.tile,
    tile_overlap: TileOverlapOpt = DEFAULTS.tile_overlap,
    scale: ScaleOpt = DEFAULTS.scale,
    cache_dir: CacheDirOpt = DEFAULTS.cache_dir,
    no_cache: NoCacheOpt = DEFAULTS.no_cache,
    resume: ResumeOpt = False,
    device: DeviceOpt = DEFAULTS.device,
    force: ForceOpt = False,
    unified: UnifiedOpt = DEFAULTS.unified,
) -> None:
    """Fit a model on the good training images of every category found."""
    from reconad import distributed, pipeline

    options = FitOptions.from_flags(locals())
    check_writable(out_dir, folder=True)
    params = parse_params(param)
    run = pipeline.fit_folder(
        model,
        params,
        data,
        category,
        out_dir,
        options,
        resume=resume,
        force=force,
        display=progress_bars,
        warn=warn,
    )
    if (distributed.launched() or (0,))[0] != 0:
        return  # the other processes of a torchrun job stay quiet
    out.print(show.fitted_text(run.config, out_dir), soft_wrap=True)


@app.command("params")
@clean_errors
def list_params(
    model: Annotated[str | None, typer.Argument(help="a model name; every model if left out")] = None,
) -> None:
    """List a model's hyper-parameters (for --param key=value): the values each takes, default, use."""
    from reconad.models.base import describe_params, model_names

    for name in [model] if model else model_names():
        out.print(show.params_table(name, describe_params(name)))


def do_test(
    run_dir: Path, data: list[str] | None, categories: list[str] | None, device: str, by_defect: bool = False
) -> tuple[Run, dict[str, CategoryResult], dict[str, Any]]:
    """:func:`reconad.pipeline.test_folder` with progress bars: the run, its results and their JSON."""
    from reconad import pipeline

    with progress_bars() as progress:
        run, results = pipeline.test_folder(run_dir, data, categories, device, progress)
    return run, results, pipeline.results_json(run, results, by_defect)


@app.command()
@clean_errors
def test(
    run_dir: RunOpt,
    data: Annotated[
        list[str] | None, typer.Option("--data", "-d", help="override the run's data sources")
    ] = None,
    category: CategoryOpt = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="write the metrics here")] = None,
    report: Annotated[Path | None, typer.Option(help="write an HTML report into this folder")] = None,
    by_defect: Annotated[
        bool, typer.Option("--by-defect", help="also the metrics per defect type (good images + that type)")
    ] = False,
    device: DeviceOpt = DEFAULTS.device,
) -> None:
    """Score the test split of each category and print image/pixel AUROC, AUPRO, F1-max and AP."""
    if json_file:
        check_writable(json_file, folder=False)
    if report:
        check_writable(report, folder=True)
    run, results, doc = do_test(run_dir, data, category, device, by_defect)
    show.print_results(out, doc, by_defect)
    if json_file:
        write_json(json_file, doc)
        out.print(f"metrics → {escape(str(json_file))}", soft_wrap=True)
    if report:
        from reconad.report.html import write_report

        page = write_report(report, run.config, results, doc)
        out.print(f"report → {escape(str(page))}", soft_wrap=True)


@app.command()
@clean_errors
def threshold(
    run_dir: RunOpt,
    category: OneCategoryOpt = None,
    false_reject: Annotated[
        float | None, typer.Option(help="from the stored good scores, at this rate")
    ] = None,
    value: Annotated[float | None, typer.Option(help="this threshold")] = None,
    labelled: Annotated[Path | None, typer.Option(help="from a folder with good/ and defective/")] = None,
    device: DeviceOpt = DEFAULTS.device,
) -> None:
    """Re-set a threshold without refitting: for a false-reject rate, to a value, or from labelled images."""
    from reconad.operating import set_threshold

    with progress_bars() as progress:
        scorer = None
        if labelled is not None:  # only then is torch imported: the other modes read run.json alone
            from reconad.inference import LabelledFolder

            scorer = LabelledFolder(labelled, device, progress)
        change = set_threshold(run_dir, category, false_reject=false_reject, value=value, labelled=scorer)
    out.print(show.threshold_text(change), soft_wrap=True)


@app.command()
@clean_errors
def add(
    run_dir: RunOpt,
    inputs: Annotated[list[Path], typer.Argument(help="good images or folders of them")],
    category: OneCategoryOpt = None,
    device: DeviceOpt = DEFAULTS.device,
) -> None:
    """Learn from confirmed good parts: add good images to a PatchCore or SGFR run without refitting."""
    from reconad.learn import add_good_images

    with progress_bars() as progress:
        done = add_good_images(run_dir, inputs, category, device, progress)
    out.print(show.added_text(done), soft_wrap=True)


@app.command()
@clean_errors
def predict(
    run_dir: RunOpt,
    inputs: Annotated[list[Path], typer.Argument(help="images or folders of images")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="folder for overlays and scores.csv")],
    category: OneCategoryOpt = None,
    device: DeviceOpt = DEFAULTS.device,
    force: ForceOpt = False,
) -> None:
    """Score new images: a heat-map overlay per image and scores.csv (path, score, is_anomalous, error)."""
    from reconad.inference import predict_folder

    with progress_bars() as progress:
        run, done = predict_folder(run_dir, inputs, category, out_dir, device, progress, force, warn)
    out.print(show.predicted_text(done, run.categories[done.category]["threshold"], out_dir), soft_wrap=True)
    for _, message in done.failures:
        err.print(f"[red]skipped[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if done.failures:
        err.print(f"[red]{len(done.failures)} of {done.n_inputs} images could not be read[/red]")
        raise typer.Exit(1)


@app.command()
@clean_errors
def serve(
    run_dir: RunOpt,
    host: Annotated[str, typer.Option(help="address to bind (loopback unless told otherwise)")] = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="processes, each loading the run once")] = 1,
    max_upload_mb: Annotated[float, typer.Option(help="largest request body accepted")] = 20,
    api_key_env: Annotated[str | None, typer.Option(help="env variable with the /v1/* Bearer key")] = None,
    record: Annotated[Path | None, typer.Option(help="CSV file: a row appended per image checked")] = None,
    feedback_dir: Annotated[Path | None, typer.Option(help="where POST /v1/feedback stores images")] = None,
) -> None:
    """Serve a run over HTTP: POST /v1/predict, GET /v1/model, GET /healthz and an inspection page at /."""
    settings = dict(locals())
    from reconad.serve.server import serve as serve_run

    serve_run(**settings, warn=warn)


@app.command()
@clean_errors
def export(
    run_dir: RunOpt,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="export folder to write")],
    category: CategoryOpt = None,
) -> None:
    """Export a run as ONNX graphs + manifest + predict.py: a folder that scores images without PyTorch."""
    from reconad.export.writer import export_run

    with progress_bars() as progress:
        doc = export_run(run_dir, out_dir, category, progress)
    out.print(show.exported_text(doc, out_dir), soft_wrap=True)


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
    """Fit, test and draw overlays end to end: on generated parts (offline, no data needed) or on --data.
    Run again, it replaces the run, metrics and overlays of the last demo in --out (no --force needed)."""
    from reconad import pipeline
    from reconad.data.synthetic import make_parts
    from reconad.report.overlay import write_overlays

    start = time.perf_counter()
    if not data:
        part = make_parts(out_dir / "data", n_train=60, n_test_good=12, n_test_bad=24, size=192, seed=0)
        out.print(f"generated synthetic parts with drawn defects → {part.parent}")
        data = [f"mvtec:{part.parent}"]
    run_dir = out_dir / f"run-{model}"
    pipeline.fit_folder(model, {}, data, category, run_dir, force=True, display=progress_bars, warn=warn)
    run, results, doc = do_test(run_dir, data, category, DEFAULTS.device)
    write_json(out_dir / "metrics.json", doc)
    out.print(show.metrics_table(doc, f"demo: {model} on {', '.join(doc['categories'])}"))
    overlays = write_overlays(out_dir / "overlays", run.config, results)
    out.print(f"overlays (ground truth outlined in red) → {overlays}")
    out.print(
        f"done in {time.perf_counter() - start:.0f} s · run → {run_dir} · metrics → {out_dir}/metrics.json"
    )


@app.command()
@clean_errors
def bench(
    model: Annotated[list[str], typer.Option("--model", "-m", help="models to compare; repeatable")],
    data: DataOpt,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="folder for results.json, .md, report.html")],
    category: CategoryOpt = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="MODEL.key=value; repeatable; `reconad params MODEL` lists them"),
    ] = None,
    seed: int = DEFAULTS.seed,
    cache_dir: CacheDirOpt = DEFAULTS.cache_dir,
    device: DeviceOpt = DEFAULTS.device,
    backbone: BackboneOpt = DEFAULTS.backbone,
    weights: WeightsOpt = DEFAULTS.weights,
    image_size: ImageSizeOpt = DEFAULT_IMAGE_SIZE,
    layers: LayersOpt = DEFAULT_LAYERS,
    holdout: HoldoutOpt = DEFAULTS.holdout,
    false_reject: FalseRejectOpt = DEFAULTS.false_reject,
    unified: UnifiedOpt = DEFAULTS.unified,
) -> None:
    """Fit and test every model on every category on shared features; write a results table and report."""
    options = FitOptions.from_flags(locals())
    from reconad.bench import per_model, run_bench

    params = per_model(parse_params(param))
    with progress_bars() as progress:
        md = run_bench(model, data, category, out_dir, params=params, options=options, progress=progress)
    print(md)
    out.print(f"results → {out_dir}")


def run() -> None:
    """Console-script entry point."""
    app(prog_name="reconad")


if __name__ == "__main__":
    sys.exit(run())
