"""The web application (Starlette): the static page, and a small JSON API over the job queue.

    GET    /                       the page (static, nothing from outside: works offline)
    GET    /api/models             the models offered, the precisions, the limits
    POST   /api/jobs?model=&precision=&self_ensemble=&name=    the photo's bytes as the body -> the new job
    GET    /api/jobs               every job since the server started, with its state and progress
    GET    /api/jobs/{id}          one job
    DELETE /api/jobs/{id}          cancel it
    GET    /api/jobs/{id}/result   the derained photo, in the input's format, bit depth and alpha
    GET    /api/jobs/{id}/preview/{input|result}   8-bit PNGs for the before/after view

With a token, every ``/api`` request carries it (header ``X-Token`` or ``?token=``). Errors are JSON
``{"error": one line}``.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..optional import require
from ..photos import JPEG_EXTENSIONS
from ..precision import PRECISIONS
from .jobs import FINISHED, Job, JobQueue, Model, new_job_id, size_of
from .uploads import UploadError, inspect

STATIC = Path(__file__).with_name("static")
CHUNK = 1 << 20


@dataclass
class Limits:
    max_bytes: int
    max_pixels: int
    max_storage_bytes: int


def create_app(models: list[Model], jobs: JobQueue, limits: Limits, token: str | None = None) -> Any:
    """The Starlette application over ``models`` and ``jobs``; ``jobs`` is stopped when the application ends."""
    require("starlette", "drsformer serve")
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    by_id = {model.id: model for model in models}

    def error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def check(request: Request) -> Response:
            if token is not None:
                given = request.headers.get("x-token") or request.query_params.get("token") or ""
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return error("a valid token is required (the URL the server printed carries it)", 401)
            return await handler(request)

        return check

    def job_of(request: Request) -> Job | None:
        return jobs.get(request.path_params["job"])

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def list_models(request: Request) -> Response:
        return JSONResponse({
            "models": [m.describe() for m in models],
            "precisions": list(PRECISIONS),
            "default_precision": models[0].settings.precision,
            "max_bytes": limits.max_bytes,
            "max_pixels": limits.max_pixels,
        })  # fmt: skip

    async def create_job(request: Request) -> Response:
        params = request.query_params
        model = by_id.get(params.get("model", models[0].id))
        if model is None:
            return error(f"unknown model {params.get('model')!r}", 400)
        precision = params.get("precision", model.settings.precision)
        if precision not in PRECISIONS:
            return error(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}", 400)
        name = os.path.basename(params.get("name", "photo"))[:200] or "photo"
        declared = int(request.headers.get("content-length") or 0)
        if declared > limits.max_bytes:
            return error(f"too large: {declared:,} bytes, more than this server's limit of {limits.max_bytes:,}", 413)
        if jobs.pending() and size_of_all(jobs) + declared > limits.max_storage_bytes:
            return error("the server's temporary folder is full; wait for the queued photos to finish", 507)
        job_id = new_job_id()
        folder = jobs.root / job_id
        folder.mkdir(parents=True)
        upload = folder / "upload"
        try:
            received = 0
            with open(upload, "wb") as f:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > limits.max_bytes:
                        raise UploadError(
                            f"too large: more than this server's limit of {limits.max_bytes:,} bytes", 413
                        )
                    f.write(chunk)
            if not received:
                raise UploadError("empty upload: no bytes received", 400)
            header = await asyncio.to_thread(inspect, upload, limits.max_pixels)
        except ClientDisconnect:  # the client left mid-upload: nothing of it stays
            shutil.rmtree(folder, ignore_errors=True)
            return Response(status_code=400)
        except UploadError as err:
            shutil.rmtree(folder, ignore_errors=True)
            return error(str(err), err.status)
        job = Job(job_id, name, model, precision, params.get("self_ensemble", "false") == "true", folder,
                  header.suffix, header.width, header.height)  # fmt: skip
        upload.rename(job.input)
        jobs.submit(job)
        return JSONResponse(job.describe(), status_code=201)

    async def list_jobs(request: Request) -> Response:
        return JSONResponse({"jobs": jobs.listing()})

    async def one_job(request: Request) -> Response:
        job = job_of(request)
        if job is None:
            return error("unknown job", 404)
        if request.method == "DELETE" and job.state not in FINISHED:
            jobs.cancel(job)
        return JSONResponse(job.describe())

    async def result(request: Request) -> Response:
        job = job_of(request)
        if job is None:
            return error("unknown job", 404)
        if job.state != "done":
            return error(f"no result: the job is {job.state}", 409)
        headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(download_name(job))}"}
        return FileResponse(job.result, headers=headers)

    async def preview(request: Request) -> Response:
        job = job_of(request)
        which = request.path_params["which"]
        if job is None or which not in ("input", "result"):
            return error("unknown job or picture", 404)
        path = job.preview(which)
        if not path.is_file():
            return error(f"no {which} picture yet: the job is {job.state}", 409)
        return FileResponse(path, media_type="image/png")

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(jobs.stop)

    routes = [
        Route("/", index),
        Route("/api/models", guarded(list_models)),
        Route("/api/jobs", guarded(create_job), methods=["POST"]),
        Route("/api/jobs", guarded(list_jobs), methods=["GET"]),
        Route("/api/jobs/{job}", guarded(one_job), methods=["GET", "DELETE"]),
        Route("/api/jobs/{job}/result", guarded(result)),
        Route("/api/jobs/{job}/preview/{which}", guarded(preview)),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def size_of_all(jobs: JobQueue) -> int:
    return sum(size_of(folder) for folder in jobs.root.iterdir() if folder.is_dir()) if jobs.root.is_dir() else 0


def download_name(job: Job) -> str:
    """The client's name for the photo with the suffix of its real format (the result is written in it)."""
    stem = Path(job.name).stem or "photo"
    return f"{stem}{job.suffix}" if Path(job.name).suffix.lower() not in _SAME[job.suffix] else job.name


_SAME = {".png": (".png",), ".jpg": JPEG_EXTENSIONS, ".bmp": (".bmp",), ".tif": (".tif", ".tiff"),
         ".webp": (".webp",), ".ppm": (".ppm", ".pgm", ".pbm")}  # fmt: skip
