"""HTTP limits for the public Space that Gradio's own settings do not cover.

An ASGI middleware, so it sees every request before Gradio does:
- an upload request (any multipart POST) may carry at most `max_upload_parts` files and `max_upload_bytes` in all:
  counted while the body streams in, so a request over the limit is refused before its files are stored; the
  boundary is read with the parser Gradio uses, so no spelling of the header gets past the count; the refusal
  reaches Gradio's upload parser as its own size error, so it deletes the part files it had already spooled;
- any other request body (a queue join, an API call: small JSON, files go by path) may be at most
  `max_request_bytes`, so a request cannot carry megabytes into Gradio's parsers and logs;
- a queue join must name an endpoint the app has (`endpoint_ids`): Gradio answers an unknown `fn_index` with a
  500 and a traceback in the log, so each such request would add one;
- Gradio's audio-recording route is closed: this app takes no audio, and that route keeps its files where no
  purge reaches them;
- every response says `X-Content-Type-Options: nosniff` (a served file is never sniffed into HTML or script)
  and sends no referrer;
- the paths an upload was stored at are reported to `on_uploaded`: identical files share one path, so the app
  counts them and deletes a file only when the last request that uploaded it has been answered.
"""

from __future__ import annotations

import json
from typing import Callable, Collection

from gradio.data_classes import PredictBody
from gradio.route_utils import MultiPartException
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
CLOSED_ROUTES = ("/process_recording",)


class BodyLimits:
    """Counts the bytes of a body, and the parts of a multipart one, as it streams; 413 as soon as a limit is passed.

    A multipart body's refusal is Gradio's `MultiPartException` (its message says "maximum allowed size", which
    Gradio answers with 413): raised inside Gradio's upload parser, it makes the parser delete its spool files."""

    def __init__(self, boundary: bytes | None, max_parts: int, max_bytes: int, multipart: bool = True) -> None:
        self.delimiter = b"--" + boundary if boundary else None  # without one only the bytes are counted
        self.max_parts, self.max_bytes, self.multipart = max_parts, max_bytes, multipart
        self.delimiters_seen, self.bytes_seen = 0, 0
        self.tail = b""  # the end of the previous chunk: a delimiter may straddle two chunks

    def refusal(self, message: str) -> Exception:
        return MultiPartException(message) if self.multipart else HTTPException(413, message)

    def too_large(self) -> Exception:
        what = "Upload" if self.multipart else "Request"
        return self.refusal(f"{what} too large: {self.max_bytes / 2**20:g} MB in one request is the maximum allowed size.")

    def feed(self, chunk: bytes) -> None:
        self.bytes_seen += len(chunk)
        if self.bytes_seen > self.max_bytes:
            raise self.too_large()
        if self.delimiter is None:
            return
        window = self.tail + chunk
        self.delimiters_seen += window.count(self.delimiter) - self.tail.count(self.delimiter)
        self.tail = window[-(len(self.delimiter) - 1):]
        # n parts have n + 1 delimiters (the last one closes the body)
        if self.delimiters_seen - 1 > self.max_parts:
            raise self.refusal(f"Too many files in one upload: {self.max_parts} is the maximum allowed size of one request.")


class HttpGuard:
    def __init__(self, app: ASGIApp, max_upload_parts: int = 100, max_upload_bytes: int = 256 * 2**20,
                 max_request_bytes: int = 2**20, on_uploaded: Callable[[list[str]], None] | None = None,
                 endpoint_ids: Callable[[], Collection[int]] | None = None) -> None:
        self.app = app
        self.max_upload_parts, self.max_upload_bytes = max_upload_parts, max_upload_bytes
        self.max_request_bytes = max_request_bytes
        self.on_uploaded = on_uploaded
        self.endpoint_ids = endpoint_ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_headers(message)

        path = scope["path"].rstrip("/")
        if scope["method"] == "POST" and path.endswith(CLOSED_ROUTES):
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send_with_headers)
            return
        media_type, options = parse_options_header(Headers(scope=scope).get("content-type", ""))
        try:
            if scope["method"] == "POST" and (path.endswith("/upload") or media_type.startswith(b"multipart/")):
                limits = BodyLimits(options.get(b"boundary"), self.max_upload_parts, self.max_upload_bytes)
                receive = self._counted(scope, receive, limits)
                if self.on_uploaded is not None and path.endswith("/upload"):
                    send_tracked = self._reporting_stored_paths(send_tracked)
            elif scope["method"] in ("POST", "PUT", "PATCH"):
                receive = self._counted(scope, receive, BodyLimits(None, 0, self.max_request_bytes, multipart=False))
                if self.endpoint_ids is not None and path.endswith("/queue/join"):
                    body = await self._read_body(receive)
                    if not self._names_an_endpoint(body):
                        await PlainTextResponse("Unknown endpoint (fn_index).", status_code=400)(scope, receive, send_with_headers)
                        return
                    receive = self._replaying(body, receive)
            await self.app(scope, receive, send_tracked)
        except (HTTPException, MultiPartException) as refusal:  # a limit passed where Gradio's parser was not reading
            if started:
                raise
            message = refusal.detail if isinstance(refusal, HTTPException) else refusal.message
            await PlainTextResponse(message, status_code=413)(scope, receive, send_with_headers)

    def _names_an_endpoint(self, body: bytes) -> bool:
        """False only for a join whose fn_index, read as Gradio reads it (its own model: "7", 7.0 and true are all
        integers there), is one the app has no endpoint for; a malformed join is left to Gradio's validation (a 422,
        without a traceback)."""
        try:  # as FastAPI reads it: json.loads on the bytes (any UTF encoding, a BOM, NaN), then the model
            fn_index = PredictBody.model_validate(json.loads(body)).fn_index
        except (ValueError, RecursionError):
            return True
        return fn_index is None or fn_index in self.endpoint_ids()

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        return bytes(body)

    @staticmethod
    def _replaying(body: bytes, receive: Receive) -> Receive:
        """The body read here, handed to the app as if it streamed in now; then the client's own messages."""
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _reporting_stored_paths(self, send: Send) -> Send:
        """Reads the upload's answer (a small JSON list of stored paths) as it passes, and reports the paths."""
        status, body = 0, bytearray()

        async def reporting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200:
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        paths = json.loads(bytes(body))
                    except ValueError:
                        paths = None
                    if isinstance(paths, list):
                        self.on_uploaded([path for path in paths if isinstance(path, str)])
            await send(message)

        return reporting

    @staticmethod
    def _counted(scope: Scope, receive: Receive, limits: BodyLimits) -> Receive:
        length = Headers(scope=scope).get("content-length")
        if length and length.isdigit() and int(length) > limits.max_bytes:
            raise limits.too_large()  # refused before a byte of the body is read

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                limits.feed(message.get("body", b""))
            return message

        return counted
