"""The studio's web application (Starlette): the JSON/PNG API and the static page that uses it.

- ``GET /api/info``: dataset, classes (index, name, colour), image size, VAE or not, device.
- ``POST /api/generate``: multipart ``label`` (PNG of class indices or palette PNG), optional
  ``instance`` (PNG), ``seed`` (integer), ``style`` (a photo; VAE generators), ``class_seeds``
  (JSON ``{"<class index>": seed}``: those classes' 3D noise re-drawn; OASIS generators) -> the photo
  (PNG at the model's size). Headers: ``Server-Timing`` (time on the device),
  ``X-Studio-Seed``, ``X-Studio-Notes`` (JSON list, e.g. that the map was resized).
- ``POST /api/segment``: multipart ``photo`` -> its label map (palette PNG of class indices)
  from the dataset's segmenter; 503 with the reason when there is none.
- ``POST /api/label`` / ``POST /api/instance``: a label / instance map as the page edits it
  (validated, resized to the model's size; instance ids renumbered into 16 bits).
- ``/``: the page (``static/``: index.html, its ES modules and styles, served as they are, no
  build step), no external resources (the Content-Security-Policy says so).

Errors are JSON ``{"error": message}`` with a 4xx status for bad input (see
:mod:`gaugan.studio.inputs`); an unexpected error answers 500 and the server keeps serving.
The POSTs take a place in the model's queue (:mod:`.queue`: 409 replaced by a newer
request of the same client, 429 busy) before their uploads are read; requests from other
web pages and Host names not served are refused (:mod:`.origin`: 403, 400).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio.from_thread
import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gaugan.data.io import DataError
from gaugan.data.registry import DatasetSpec
from gaugan.errors import UserError
from gaugan.models.encoder import ConvEncoder
from gaugan.models.loading import LoadedGenerator, load_encoder
from gaugan.studio.inputs import (
    MAX_UPLOAD_BYTES,
    StudioInputError,
    Upload,
    parse_class_seeds,
    parse_seed,
    read_instance_upload,
    read_label_upload,
    read_photo_upload,
)
from gaugan.studio.origin import RequestGuard
from gaugan.studio.queue import RETRY_AFTER_SECONDS, QueueRefusal
from gaugan.studio.segment import SegmenterUnavailable, load_dataset_segmenter
from gaugan.studio.service import SegmenterLoader, StudioService, device_description, instance_png, label_png
from gaugan.synthesize import load_generator_for

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 3 * MAX_UPLOAD_BYTES + 2**20  # label + instance + style, and the multipart framing
JAVASCRIPT = "text/javascript; charset=utf-8"  # the page's ES modules (RFC 9239)
CLIENT_HEADER = "x-studio-client"  # the page's id, so that its newer requests replace its older ones
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client abandoned; nobody reads it
# Everything the page loads comes from this server; photos are shown from blob: URLs.
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' blob:; object-src 'none'; base-uri 'none'"


def create_app(
    loaded_generator: LoadedGenerator,
    spec: DatasetSpec,
    segmenter_loader: SegmenterLoader | None,
    device: torch.device,
    encoder: ConvEncoder | None = None,
    style_problem: str | None = None,
    allowed_hosts: list[str] | None = None,
    manifest: dict | None = None,
) -> Starlette:
    """The studio for one loaded generator.

    ``segmenter_loader`` is called once, on the first photo to segment (None: no segmenter);
    ``encoder`` is the VAE's style encoder (``style_problem`` says why there is none);
    ``allowed_hosts`` are the only Host names answered (None: any, for in-process use; the
    command gives the loopback names and ``--allowed-host``'s, which keeps out web pages that
    rebind their DNS to this computer); ``manifest`` is the store's ``manifest.json``, whose
    class names and colours are shown when it fits ``spec``.
    """
    service = StudioService(loaded_generator, spec, device, segmenter_loader, encoder, manifest)
    queue = service.queue
    info = studio_info(service, style_problem)

    async def get_info(request: Request) -> Response:
        return JSONResponse(info)

    async def generate(request: Request) -> Response:
        async with queue.place(client_of(request), "generate") as place:
            async with request.form() as form:
                queue.check(place)  # replaced while its body came in: nothing of it is read into memory
                label = await form_upload(form, "label")
                instance = await form_upload(form, "instance")
                style = await form_upload(form, "style")
                seed = parse_seed(form_text(form, "seed"))
                class_seeds = parse_class_seeds(form_text(form, "class_seeds"), spec.num_label_values)
            if class_seeds and info["style"]["region_reason"]:
                raise StudioInputError(f"class_seeds: {info['style']['region_reason']}; leave 'class_seeds' out", 400)
            if style is not None and info["style"]["photo_reason"]:
                raise StudioInputError(f"{style}: {info['style']['photo_reason']}; leave 'style' out", 400)
            style_file = read_photo_upload(style, "style") if style is not None else None

            def is_cancelled() -> bool:  # runs in the worker thread, asks the event loop
                return anyio.from_thread.run(request.is_disconnected)

            async with queue.turn(place):
                label_input = await run_in_threadpool(read_label_upload, spec, label, instance)
                generated = await run_in_threadpool(service.generate, label_input, seed, style_file, is_cancelled,
                                                    class_seeds)
        if generated is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        headers = {
            "Server-Timing": f"generate;dur={generated.milliseconds:.1f}",
            "X-Studio-Seed": str(seed),
            "X-Studio-Class-Seeds": json.dumps({str(index): value for index, value in class_seeds.items()}),
            "X-Studio-Notes": json.dumps(label_input.notes),
        }
        return Response(generated.png, media_type="image/png", headers=headers)

    async def segment(request: Request) -> Response:
        async with queue.place(client_of(request), "segment") as place:
            async with request.form() as form:
                queue.check(place)
                photo = read_photo_upload(await form_upload(form, "photo"), "photo")
            async with queue.turn(place):
                labels = await run_in_threadpool(service.segment, photo)
        return Response(label_png(labels, service.palette), media_type="image/png")

    async def normalise_label(request: Request) -> Response:
        async with queue.place(client_of(request), "label") as place:
            async with request.form() as form:
                queue.check(place)
                label = await form_upload(form, "label")
            async with queue.turn(place):
                label_input = await run_in_threadpool(read_label_upload, spec, label, None)
        notes = [note for note in label_input.notes if not note.startswith("no instance map")]
        return Response(label_png(label_input.labels, service.palette), media_type="image/png",
                        headers={"X-Studio-Notes": json.dumps(notes)})

    async def normalise_instance(request: Request) -> Response:
        async with queue.place(client_of(request), "instance") as place:
            async with request.form() as form:
                queue.check(place)
                instance = await form_upload(form, "instance")
            async with queue.turn(place):
                ids, notes = await run_in_threadpool(read_instance_upload, spec, instance)
        return Response(instance_png(ids), media_type="image/png", headers={"X-Studio-Notes": json.dumps(notes)})

    routes = [
        Route("/api/info", get_info, methods=["GET"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/segment", segment, methods=["POST"]),
        Route("/api/label", normalise_label, methods=["POST"]),
        Route("/api/instance", normalise_instance, methods=["POST"]),
        Mount("/", PageFiles(directory=STATIC_DIR, html=True), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(RequestGuard, allowed_hosts=allowed_hosts),
        Middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        UserError: user_error_response,
        HTTPException: http_error_response,
        Exception: internal_error_response,
    }
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
    app.state.service = service
    return app


def studio_info(service: StudioService, style_problem: str | None) -> dict[str, Any]:
    """``GET /api/info``: everything the page needs to set itself up."""
    spec, loaded = service.spec, service.loaded
    height, width = spec.image_size
    noise_channels = loaded.config.noise_channels
    region_reason = None if noise_channels else (
        "only a generator with 3D noise (OASIS, generator.noise_channels > 0) re-draws one class's region")
    if service.is_vae:
        seed_reason = None
        photo_reason = None if service.encoder is not None else (style_problem or "the checkpoint has no style encoder")
    elif noise_channels:
        seed_reason = None
        photo_reason = ("this generator draws its style as 3D noise, not from a photo: copying a photo's style "
                        "needs a VAE generator (encoder.use_vae=true)")
    else:
        reason = ("this generator has neither a VAE (encoder.use_vae) nor 3D noise (generator.noise_channels): "
                  "the label map alone decides the photo, there is no style to re-roll or copy")
        seed_reason, photo_reason = reason, reason
    return {
        "dataset": spec.name,
        "classes": [
            {"index": index, "name": name, "colour": "#{:02x}{:02x}{:02x}".format(*colour)}
            for index, (name, colour) in enumerate(zip(service.class_names, service.palette.tolist()))
        ],
        "image_size": {"height": height, "width": width},
        "use_instance": spec.use_instance,
        "vae": service.is_vae,
        "noise_channels": noise_channels,
        "style": {"seed_reason": seed_reason, "photo_reason": photo_reason, "region_reason": region_reason},
        "device": device_description(service.device),
        "checkpoint": {"path": str(loaded.path), "source": loaded.source, "weights": loaded.weights},
        "max_upload_bytes": MAX_UPLOAD_BYTES,
    }


def client_of(request: Request) -> str:
    """Who sent a request, for the queue: the page's id, else the connection (a script's requests are its own)."""
    if CLIENT_HEADER in request.headers:
        return f"page {request.headers[CLIENT_HEADER]}"
    address = request.client
    return f"connection {address.host}:{address.port}" if address else "connection unknown"


async def form_upload(form: FormData, name: str) -> Upload | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, UploadFile):
        if value == "":
            return None  # an empty file input of an HTML form
        raise StudioInputError(f"form field {name!r} must be a file upload, got a text value", 400)
    return Upload(name, value.filename, await value.read())


def form_text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise StudioInputError(f"form field {name!r} must be a text value, got a file", 400)
    return value


def error_response(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def user_error_response(request: Request, error: Exception) -> Response:
    if isinstance(error, StudioInputError):
        return error_response(str(error), error.status)
    if isinstance(error, QueueRefusal):
        response = error_response(str(error), error.status)
        if error.status == 429:
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    if isinstance(error, SegmenterUnavailable):
        return error_response(str(error), 503)
    return error_response(str(error), 422 if isinstance(error, DataError) else 400)


async def http_error_response(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return error_response(str(error.detail), error.status_code)


async def internal_error_response(request: Request, error: Exception) -> Response:
    # Starlette logs the traceback after this response; the server keeps serving.
    return error_response(f"internal error ({type(error).__name__}: {error}); the server keeps running", 500)


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` (413) before they are spooled to disk."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(self.message(int(declared)), 413)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise StudioInputError(self.message(received), 413)
            return message

        await self.app(scope, counting_receive, send)

    def message(self, size: int) -> str:
        return (f"request body of {size / 2**20:.1f} MB is over the {self.max_bytes / 2**20:.0f} MB limit "
                f"({MAX_UPLOAD_BYTES // 2**20} MB per file)")


class PageFiles(StaticFiles):
    """The page's files. Its scripts are ES modules, which a browser runs only when they come
    as JavaScript (the page is also sent with nosniff): ``.js`` is always ``text/javascript``,
    whatever the system's MIME table says (some map it to ``text/plain``)."""

    def file_response(self, full_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(full_path, *args, **kwargs)
        if str(full_path).endswith(".js") and "content-type" in response.headers:  # not on a 304
            response.headers["content-type"] = JAVASCRIPT
        return response


class SecurityHeaders:
    """A Content-Security-Policy that allows nothing from elsewhere, on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def studio_for_checkpoint(
    checkpoint: str | os.PathLike,
    dataset: str | None,
    device: torch.device,
    segmenter_weights_dir: str | os.PathLike,
    segmenter_checkpoint: str | os.PathLike,
    prefer_ema: bool = True,
    allowed_hosts: list[str] | None = None,
    manifest: dict | None = None,
) -> Starlette:
    """The studio for one of our checkpoints or an official ``latest_net_G.pth`` (``dataset`` names its spec).

    The VAE's style encoder is loaded when there is one (else the page says why style photos
    are off); the segmenter is loaded on the first photo to segment.
    """
    loaded = load_generator_for(checkpoint, dataset, device, prefer_ema)
    encoder, style_problem = None, None
    if loaded.z_dim is not None:
        try:
            encoder = load_encoder(checkpoint, device)
        except UserError as err:
            style_problem = f"no style encoder ({err})"
    segmenter_loader = functools.partial(
        load_dataset_segmenter, loaded.spec, device, segmenter_weights_dir, segmenter_checkpoint
    )
    return create_app(loaded, loaded.spec, segmenter_loader, device, encoder, style_problem, allowed_hosts, manifest)
