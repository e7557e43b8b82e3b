"""The web app: ``POST /v1/predict``, ``POST /v1/feedback``, ``GET /v1/model``, ``GET /v1/record``,
``GET /healthz`` and the inspection page ``GET /``.

Every error is JSON ``{"error": "<one line>"}`` with its status (400 bad request or unreadable image, 401 no
or wrong API key, 404 unknown category or path, 409 feedback to a server without a feedback folder, 413
upload or image too large, 415 not an image), never a traceback. With an API key, ``/v1/*`` is refused before
its body is read.
"""

from __future__ import annotations

import hmac
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from reconad import __version__
from reconad.errors import ImageTooLarge, NotAnImage, ReconadError
from reconad.runfolder import UnknownCategory
from reconad.serve.line import LABELS, Record, store_feedback
from reconad.serve.predictor import Predictor, Upload
from reconad.serve.workers import ENV_FEEDBACK, ENV_KEY_VAR, ENV_MAX_UPLOAD, ENV_RECORD, ENV_RUN, ENV_THREADS

STATIC = Path(__file__).parent / "static"
#: The page loads nothing from elsewhere: scripts, styles and images come from this server (or are data/blob
#: URLs it made), and it cannot be framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: The status of each kind of error predict can raise (first match wins).
STATUS: list[tuple[type[ReconadError], int]] = [
    (UnknownCategory, 404),
    (ImageTooLarge, 413),
    (NotAnImage, 415),
    (ReconadError, 400),
]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error: ``{"error": message}`` (one line)."""
    return JSONResponse({"error": " ".join(message.split())}, status, headers)


class BearerAuth:
    """ASGI middleware: requests under ``prefix`` need ``Authorization: Bearer <key>`` (compared in constant
    time), checked before their body is read."""

    def __init__(self, app: ASGIApp, key: str, prefix: str = "/v1/") -> None:
        self.app, self.key, self.prefix = app, key.encode(), prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            why = None
            if scheme.lower() != "bearer" or not token.strip():
                why = "missing API key: send the header 'Authorization: Bearer <key>'"
            elif not hmac.compare_digest(token.strip().encode(), self.key):
                why = "wrong API key"
            if why:
                response = error(401, why, {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class DeclaredSizeLimit:
    """ASGI middleware: a request whose ``Content-Length`` is over ``max_bytes`` gets the JSON 413 before
    any of its body is read (the route's ``max_body_size`` counts the bytes of bodies sent without one)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                return await error(413, too_large(self.max_bytes))(scope, receive, send)
        await self.app(scope, receive, send)


def too_large(max_bytes: int) -> str:
    return f"upload too large: the limit is {max_bytes / 2**20:g} MB (--max-upload-mb)"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    hint = " (send images as multipart fields named 'file')" if any("file" in p for p in parts) else ""
    return f"bad request: {'; '.join(parts)}{hint}"


def _add_error_handlers(app: FastAPI, max_upload_bytes: int) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 413:
            message = too_large(max_upload_bytes)
        return error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, _validation_message(exc))

    @app.exception_handler(ReconadError)
    async def reconad_error(request: Request, exc: ReconadError) -> JSONResponse:
        return error(next(code for kind, code in STATUS if isinstance(exc, kind)), str(exc))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # uvicorn logs the traceback
        return error(500, f"internal error: {type(exc).__name__}")


def create_app(
    predictor: Predictor,
    *,
    max_upload_bytes: int = 20 * 2**20,
    api_key: str | None = None,
    record: Path | None = None,
    feedback_dir: Path | None = None,
) -> FastAPI:
    """The app serving ``predictor``; ``api_key`` guards ``/v1/*``; a request body over
    ``max_upload_bytes`` is refused (413) before it is parsed or decoded. With ``record`` (a CSV file, see
    :class:`~reconad.serve.line.Record`) each image scored adds a row; with ``feedback_dir`` the page's
    labels are stored there (:func:`~reconad.serve.line.store_feedback`)."""
    recorder = Record(record) if record else None
    app = FastAPI(title="reconad", version=__version__, docs_url=None, redoc_url=None)
    _add_error_handlers(app, max_upload_bytes)
    app.add_middleware(DeclaredSizeLimit, max_bytes=max_upload_bytes)
    if api_key:  # added last, so it runs first: no body is looked at without the key
        app.add_middleware(BearerAuth, key=api_key)
    v1 = APIRouter(prefix="/v1")

    @v1.post("/predict", max_body_size=max_upload_bytes)
    async def predict(
        file: Annotated[list[UploadFile], File(description="one or more images")],
        category: Annotated[str | None, Form()] = None,
        map: Annotated[Literal["png"] | None, Query(description="png: add each heat-map overlay")] = None,
    ) -> dict[str, Any]:
        uploads = [Upload(f.filename or f"image-{i + 1}", await f.read()) for i, f in enumerate(file)]
        results = await run_in_threadpool(predictor.predict, uploads, category, map == "png")
        if recorder:
            await run_in_threadpool(recorder.add, results, uploads, predictor.run_id)
        return {"results": results}

    @v1.post("/feedback", max_body_size=max_upload_bytes)
    async def feedback(
        file: Annotated[UploadFile, File(description="one image")],
        label: Annotated[str | None, Form(description="good or defective")] = None,
        category: Annotated[str | None, Form()] = None,
    ) -> Any:
        if feedback_dir is None:
            return error(409, "this server stores no feedback: start it with --feedback-dir DIR")
        if label not in LABELS:
            got = f"got {label[:40]!r}" if label else "send the form field 'label'"
            return error(400, f"bad request: label must be good or defective: {got}")
        upload = Upload(file.filename or "image", await file.read())
        category = await run_in_threadpool(predictor.check, upload, category)
        return await run_in_threadpool(store_feedback, feedback_dir, category, label, upload)

    @v1.get("/record")
    def download_record() -> Any:
        if recorder is None:
            return error(404, "this server keeps no record: start it with --record FILE")
        size, chunks = recorder.snapshot()
        headers = {"Content-Length": str(size), "Content-Disposition": 'attachment; filename="record.csv"'}
        return StreamingResponse(chunks, media_type="text/csv", headers=headers)

    @v1.get("/model")
    def model() -> dict[str, Any]:
        return {**predictor.info(), "record": recorder is not None, "feedback": feedback_dir is not None}

    app.include_router(v1)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def app_from_env() -> FastAPI:
    """The app each uvicorn worker builds (``factory=True``), from the settings ``reconad serve`` put in the
    environment: the run is loaded once per worker. If it cannot be built: one line on stderr and the exit
    code uvicorn's supervisor reads as a start-up failure (it then stops rather than restart the worker).

    The worker ends at once (``os._exit``): an interpreter shutting down with torch loaded stops answering
    the supervisor's health checks while it still runs, and the supervisor waited out a whole check (a
    minute) before it saw the failure every time; it still does when a check falls in the worker's last
    moments (in about a third of tries here)."""
    from uvicorn.config import STARTUP_FAILURE

    try:
        return _app_from_env()
    except Exception as err:  # whatever it is, a restarted worker would fail the same way
        why = str(err) if isinstance(err, ReconadError) else f"{type(err).__name__}: {err}"
        print(f"error: worker {os.getpid()} could not start: {' '.join(why.split())}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(STARTUP_FAILURE)


def _app_from_env() -> FastAPI:
    import torch

    from reconad.runtime import keep_freed_memory

    keep_freed_memory()
    if os.environ.get(ENV_THREADS):
        torch.set_num_threads(int(os.environ[ENV_THREADS]))
    key_var = os.environ.get(ENV_KEY_VAR)
    if key_var and not os.environ.get(key_var, "").strip():
        raise ReconadError(f"the environment variable {key_var} holding the API key is unset or empty")
    return create_app(
        Predictor(Path(os.environ[ENV_RUN])),
        max_upload_bytes=int(os.environ[ENV_MAX_UPLOAD]),
        api_key=os.environ[key_var] if key_var else None,
        record=Path(os.environ[ENV_RECORD]) if os.environ.get(ENV_RECORD) else None,
        feedback_dir=Path(os.environ[ENV_FEEDBACK]) if os.environ.get(ENV_FEEDBACK) else None,
    )
