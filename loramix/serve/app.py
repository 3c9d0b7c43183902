"""The Starlette app: one static page and JSON endpoints, every render handed to the one worker.

    GET  /                the page (static/index.html)
    GET  /api/state       the base, its defaults, the methods, whether a judge reads the previews
    GET  /api/loras       the LoRA files served, with what `inspect` knows or the error reading them gave
    POST /api/preview     render a mix; 409 when a newer request of the same tab took its place
    POST /api/xy          an XY grid of two LoRAs' weights
    POST /api/save        the composed LoRA file, as `loramix compose -o` writes it
    GET  /api/status      the worker's counts (what the load tests watch)

A request body is JSON of at most 64 KiB; errors are `{"error": "one line"}` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import Future
from dataclasses import asdict
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from loramix.choices import DEFAULT_FORMAT, FILE_METHODS, FORMATS, RENDER_METHODS
from loramix.errors import LoramixError, RequestError
from loramix.serve.mix import MAX_IMAGES, MixRequest
from loramix.serve.studio import Studio
from loramix.serve.worker import RenderWorker, Superseded, WorkerStopped

MAX_BODY = 64 * 1024
log = logging.getLogger("loramix.serve")


class ClientGone(Exception):
    """The client closed the connection while its request waited."""


def create_app(studio: Studio, worker: RenderWorker, attributes: tuple[str, ...] = ()) -> Starlette:
    """The app serving `studio` through `worker`; `attributes` are what the judge reads, if there is one."""
    page = (resources.files("loramix.serve") / "static" / "index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def state(request: Request) -> Response:
        base = studio.base
        return JSONResponse({
            "base": base.name, "steps": base.steps, "guidance": base.guidance, "size": base.size,
            "sampler": base.sampler, "methods": list(RENDER_METHODS), "file_methods": list(FILE_METHODS),
            "formats": [DEFAULT_FORMAT, *(f for f in FORMATS if f != DEFAULT_FORMAT)], "max_images": MAX_IMAGES,
            "judge": list(attributes) if studio.judge else None})

    async def loras(request: Request) -> Response:
        # reading the files runs torch, so it goes through the worker too (see loramix.serve.worker)
        entries = await _run(request, worker, ("", f"list-{id(request)}"),
                             lambda: studio.library.listing(studio.describe))
        return JSONResponse({"loras": [entry.to_dict() for entry in entries]})

    async def preview(request: Request) -> Response:
        mix = MixRequest.from_json(await _body(request))
        result = await _run(request, worker, (mix.client, "preview"), lambda: studio.preview(mix))
        return JSONResponse(result.to_dict())

    async def xy(request: Request) -> Response:
        body = await _body(request)
        grid = {key: body.pop(key, None) for key in ("x", "y", "x_weights", "y_weights")}
        if not all(isinstance(value, str) for value in grid.values()):
            raise LoramixError("an XY grid needs x, y (LoRA names) and x_weights, y_weights (like 0:1:0.25)")
        mix = MixRequest.from_json(body)
        result = await _run(request, worker, (mix.client, "xy"), lambda: studio.xy(mix, **grid))
        return JSONResponse(result)

    async def save(request: Request) -> Response:
        body = await _body(request)
        file_format = body.pop("format", DEFAULT_FORMAT)
        mix = MixRequest.from_json(body)
        data, name = await _run(request, worker, (mix.client, "save"), lambda: studio.save(mix, file_format))
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def status(request: Request) -> Response:
        return JSONResponse({**asdict(worker.stats), "waiting": worker.waiting})

    routes = [Route("/", index), Route("/api/state", state), Route("/api/loras", loras),
              Route("/api/preview", preview, methods=["POST"]), Route("/api/xy", xy, methods=["POST"]),
              Route("/api/save", save, methods=["POST"]), Route("/api/status", status)]
    handlers = {RequestError: _refused, LoramixError: _error, Superseded: _superseded,
                WorkerStopped: _stopping, ClientGone: _gone}
    return Starlette(routes=routes, exception_handlers=handlers)


async def _body(request: Request) -> dict:
    data = await request.body()
    if len(data) > MAX_BODY:
        raise RequestError(f"the request is {len(data)} bytes; at most {MAX_BODY}", 413)
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError("the request is not JSON") from None
    if not isinstance(body, dict):
        raise RequestError("the request is a JSON object")
    return body


async def _run(request: Request, worker: RenderWorker, slot: tuple[str, str], task):
    """Queue `task` and wait for it; a client that disconnects while it waits takes its task off the queue."""
    future: Future = worker.submit(slot, task)
    waiting = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=0.2)
        if done:
            return waiting.result()
        if await request.is_disconnected():
            worker.drop(slot, future)
            raise ClientGone()


async def _refused(request: Request, error: RequestError) -> Response:
    return JSONResponse({"error": str(error)}, status_code=error.status)


async def _error(request: Request, error: LoramixError) -> Response:
    return JSONResponse({"error": str(error)}, status_code=422)


async def _superseded(request: Request, error: Superseded) -> Response:
    return JSONResponse({"error": str(error), "superseded": True}, status_code=409)


async def _stopping(request: Request, error: WorkerStopped) -> Response:
    return JSONResponse({"error": str(error)}, status_code=503)


async def _gone(request: Request, error: ClientGone) -> Response:
    log.info("client left before its render started: %s", request.url.path)
    return Response(status_code=499)
