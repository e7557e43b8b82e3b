"""The terminal side of the command line: its consoles, errors as one line, warnings, progress bars, and the
flags several commands share (typer annotations; the fit options' defaults come from
:data:`reconad.options.DEFAULTS`). Torch-free, so that ``reconad --help`` answers at once."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from reconad.data.sources import FORMATS
from reconad.errors import ReconadError
from reconad.image_runtime import stored_size
from reconad.options import DEFAULTS
from reconad.progress import Progress, progress_display

err = Console(stderr=True)
out = Console()
STATE = {"debug": False, "quiet": False}
F = TypeVar("F", bound=Callable[..., Any])

DataOpt = Annotated[
    list[str],
    typer.Option("--data", "-d", help=f"FORMAT:PATH ({', '.join(FORMATS)}); repeatable"),
]
OneCategoryOpt = Annotated[
    str | None, typer.Option("--category", "-c", help="which category (needed if the run has several)")
]
CategoryOpt = Annotated[
    list[str] | None, typer.Option("--category", "-c", help="restrict to these categories; repeatable")
]
BackboneOpt = Annotated[str, typer.Option(help="timm model name")]
WeightsOpt = Annotated[Path | None, typer.Option(help="backbone weights file (safetensors or state dict)")]
ImageSizeOpt = Annotated[
    str,
    typer.Option(help="N (a square) or WxH, each a multiple of the coarsest stride (16); see docs/images.md"),
]
DEFAULT_IMAGE_SIZE = str(stored_size(DEFAULTS.image_size))
KeepAspectOpt = Annotated[
    bool,
    typer.Option(help="--image-size N is the longer side; the other follows the training images' aspect"),
]
LayersOpt = Annotated[str, typer.Option(help="backbone feature levels")]
DEFAULT_LAYERS = ",".join(map(str, DEFAULTS.layers))
HoldoutOpt = Annotated[float, typer.Option(help="unified models: good images held back to set the threshold")]
FalseRejectOpt = Annotated[float, typer.Option(help="the share of good parts the threshold may reject")]
MemoryBudgetOpt = Annotated[
    float, typer.Option(help="GB of features a per-category fit holds; more are spooled to TMPDIR")
]
TileOpt = Annotated[
    int | None, typer.Option(help="cut each image (native size × --scale) into S × S tiles; docs/images.md")
]
TileOverlapOpt = Annotated[int | None, typer.Option(help="--tile: pixels adjacent tiles share (S / 8)")]
ScaleOpt = Annotated[float, typer.Option(help="--tile: the images' native size times this")]


def clean_errors(fn: F) -> F:
    """Turn a :class:`ReconadError` into one red line and exit code 2 (a traceback only with ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/yellow]: nothing half-written was left behind", soft_wrap=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as error:
            if STATE["debug"]:
                raise
            if isinstance(error, (ReconadError, OSError)):  # a user mistake, or the file system said no
                err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            err.print(  # a bug: one line unless debugging
                f"[red]internal error:[/red] {type(error).__name__}: {escape(str(error))} "
                "(rerun with --debug for details)",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


@contextmanager
def progress_bars(quiet: bool = False) -> Iterator[Progress]:
    """Progress on stderr (:mod:`reconad.progress`): bars on a terminal, lines in a log; none if quiet."""
    with progress_display(err, quiet=quiet or STATE["quiet"]) as update:
        yield update


BitDepthOpt = Annotated[
    int | None,
    typer.Option(help="significant bits of >8-bit images: 8, 10, 12, 14, 16 (default: their measured range)"),
]
MaxPixelsOpt = Annotated[int, typer.Option(help="larger images are refused (decompression bombs)")]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="model hyper-parameter key=value; `reconad params MODEL` lists them"),
]
CacheDirOpt = Annotated[Path | None, typer.Option(help="feature cache (default ~/.cache/reconad)")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda")]
NoCacheOpt = Annotated[bool, typer.Option(help="do not read or write the feature cache")]
UnifiedOpt = Annotated[
    bool, typer.Option(help="patchcore, sgfr: one bank for every category (a threshold for each still)")
]
ResumeOpt = Annotated[bool, typer.Option(help="unified models: continue from the last finished epoch")]
RunOpt = Annotated[Path, typer.Argument(help="a run folder written by `reconad fit`")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace what --out already holds")]
