"""HTTP limits for the public Space that Gradio's own settings do not cover.

An ASGI middleware, so it sees every request before Gradio does:
- an upload request (to `/upload`; a multipart body anywhere else gets the small-body limit below) may carry at
  most `max_upload_parts` parts, files alone (a form field there gets Gradio's 500 and a traceback), and
  `max_upload_bytes` in all:
  counted while the body streams in, so a request over the limit is refused before its files are stored; the
  boundary is read with the parser Gradio uses, so no spelling of the header gets past the count; the refusal
  reaches Gradio's upload parser as its own size error, so it deletes the part files it had already spooled (and
  so does an upload the client abandons half-way);
- an upload is refused (503) while it would leave less than `min_free_disk_bytes` of disk free: uploads never
  asked about are kept for minutes, so one client uploading fast could otherwise fill the disk; and one client
  (`client_of`) may send at most `UploadQuota.max_bytes` in such a window (429), so that it alone cannot bring the
  disk down to that reserve, which would refuse everyone's uploads;
- any other request body (a queue join, an API call: small JSON, files go by path) may be at most
  `max_request_bytes`, so a request cannot carry megabytes into Gradio's parsers and logs;
- a request naming an endpoint the app does not have (`api_inputs`; `/call/NAME`), and any to `/run/NAME` and
  `/api/NAME` (with the queue on they serve nothing) but the page's own `/run/predict` for an event that skips the
  queue (`direct_fns`: loading an example), get a 404, not Gradio's 500 and traceback;
- a JSON request is read here first, as FastAPI will read it, and refused when Gradio would choke on it: a queue
  join for an endpoint the app does not have (`endpoint_inputs`), or numbers that are not finite (NaN, 1e400), get
  Gradio's 500 and tracebacks in the log; so does a join whose values are fewer than the endpoint's inputs or not
  what an input's own data model takes (a bare path or number where a file reference belongs: the client got no
  message, the log a traceback); a request naming more than `max_upload_parts` files makes Gradio
  prepare each of them (seconds of work, an empty temporary file each) before any check of the app runs, and one
  of more than `MAX_JSON_ITEMS` values can make Gradio's validation error (in its answer and its log) megabytes;
  the same checks hold for `/call/NAME`, which joins the queue by name, and for `/call/v2/NAME`, which takes the
  values by parameter name (`api_parameters`; Gradio answers a wrong or missing name there with a 500);
- a request whose file reference (`path`) is a URL or lies outside the upload folder (`file_allowed`) is refused:
  Gradio would download a URL into the upload folder with no limit of size or time, holding the worker;
- a `session_hash` (or, in the query string, an `upload_id`) longer than `MAX_SESSION_HASH` is refused: Gradio
  keeps every pending session's hash and every upload id it is asked about, so a megabyte each would pile up
  gigabytes; and an event stream (`/queue/data`, or `/call/NAME/EVENT_ID`) for a session or event with nothing
  waiting (`known_session`, `known_event`) gets its 404 before the stream starts, not after (a traceback in the
  log for each such request);
- Gradio's audio-recording route is closed: this app takes no audio, and that route keeps its files where no
  purge reaches them; so are `/file=` for a URL and `/proxy=` (Gradio would relay any public URL, with no limit
  of size or time) and the custom-component route (none here);
- a JSON body that is not text (FastAPI's error handler quotes it in a traceback, 4 times its size in the log),
  or whose text holds a lone surrogate (Gradio keeps the session hash in its event statistics, which then fail
  after every later event, for every user), is refused, and so is a `/component_server` call for a component
  the app does not have (`known_component`; Gradio's answer is a 500);
- a URL, or a host header (`Host`, `X-Forwarded-Host`, `X-Gradio-Server`), longer than `MAX_ADDRESS_CHARS` is
  refused (414, 431): Gradio builds the request's own address from them, and past httpx's limit a page answers 500
  with a traceback and a queue join is accepted, then never answered;
- every response says `X-Content-Type-Options: nosniff` (a served file is never sniffed into HTML or script)
  and sends no referrer;
- the paths an upload was stored at are reported to `on_uploaded`, with the client that sent them (`client_of`):
  identical files share one path, so the app counts them per client and deletes a file only when the last
  request that uploaded it has been answered.
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qsl
from typing import Callable, Mapping, Sequence

from gradio.data_classes import PredictBody
from gradio.route_utils import MultiPartException, get_request_origin
from gradio_client.utils import construct_args
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from admission import UNKNOWN_CLIENT

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
CLOSED_ROUTES = ("/process_recording",)
NAMED_ROUTE = re.compile(r"/(?P<route>run|api|call|call/v2)/(?P<name>[^/]+)$")  # Gradio's routes that name an endpoint
RESULTS_ROUTE = re.compile(r"/call/(?:v2/)?[^/]+/(?P<event_id>[^/]+)$")  # the results stream of a /call request
MAX_JSON_ITEMS = 5000  # values in one JSON request: a batch of 100 files is about 800
MAX_SESSION_HASH = 128  # characters; Gradio's own are 11
# Gradio builds each request's own address (httpx.URL, which refuses one over 65,536 characters) from the URL, or from
# these headers where a proxy sent them: past that a page route answers 500 with a traceback, and a queue join is
# accepted and then never answered. Common servers refuse a request line over 8 KiB.
MAX_ADDRESS_CHARS = 8192
ADDRESS_HEADERS = (b"host", b"x-forwarded-host", b"x-gradio-server")
MAX_PART_HEADER_BYTES = 16 * 2**10  # one part's header block in an upload; a browser's is about 150 bytes
NOT_TEXT = "The request is not text in UTF-8 (nor JSON in UTF-16 or 32), or holds a character that is not Unicode."
UPLOAD_FIRST = "upload the file first and send the reference the upload returns (gradio_client's handle_file does both)."


def _relay_or_unused(path: str) -> bool:
    """Gradio fetches a URL given to `/file=` (and `/proxy=`) and streams it back, with no limit of size or time:
    the Space would relay anything for anyone. This app serves local files only and has no custom components."""
    _, file_marker, target = path.partition("/file=")
    return ("://" in target or target.lower().startswith(("http:", "https:"))) if file_marker else (
        "/proxy=" in path or "/custom_component/" in path)


def _names_a_file(header_block: bytes) -> bool:
    """Whether a part's headers give it a file name (Content-Disposition: form-data; name=...; filename=...)."""
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            _, options = parse_options_header(value.strip())
            return b"filename" in options or b"filename*" in options
    return False


class NonFiniteNumber(ValueError):
    pass


def _non_finite(constant: str) -> float:
    raise NonFiniteNumber(constant)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400
        raise NonFiniteNumber(text)
    return value


def _count(content) -> tuple[int, int, list]:
    """How many values a JSON request holds, how many objects with a `path` (files, as Gradio prepares them), and
    the `path` of every one that Gradio would take for a file (marked as its FileData), at any depth."""
    items, files, paths, stack = 0, 0, [], [content]
    while stack:
        item = stack.pop()
        items += 1
        if isinstance(item, dict):
            if "path" in item:
                files += 1
                meta = item.get("meta")
                if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
                    paths.append(item["path"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return items, files, paths


class BodyLimits:
    """Counts the bytes of a body, and the parts of a multipart one, as it streams; 413 as soon as a limit is passed.
    With `files_only`, every part must be a file (Gradio's upload answers a form field with a 500 and a traceback).

    A multipart body's refusal is Gradio's `MultiPartException` (its message says "maximum allowed size", which
    Gradio answers with 413; others get a 400): raised inside Gradio's upload parser, it makes the parser delete
    its spool files."""

    def __init__(self, boundary: bytes | None, max_parts: int, max_bytes: int, multipart: bool = True,
                 files_only: bool = False) -> None:
        self.delimiter = b"--" + boundary if boundary else None  # without one only the bytes are counted
        self.max_parts, self.max_bytes, self.multipart = max_parts, max_bytes, multipart
        self.delimiters_seen, self.bytes_seen = 0, 0
        self.tail = b""  # the end of the previous chunk: a delimiter may straddle two chunks
        self.files_only = files_only and self.delimiter is not None
        self.unread = b""  # what the part check has yet to decide on: a delimiter or a header block may straddle chunks
        self.in_headers = self.closed = False

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
            # Gradio answers 413 only when the message says "maximum allowed size" (else 400)
            raise self.refusal(f"Too many files in one upload: {self.max_parts} is the maximum allowed size of one batch. "
                               "Choose fewer files, and send the rest as another batch.")
        if self.files_only:
            self._check_parts(chunk)

    def _check_parts(self, chunk: bytes) -> None:
        """Reads each part's header block (from its delimiter to the blank line) and refuses one that names no file."""
        data, position, self.unread = self.unread + chunk, 0, b""
        while not self.closed:
            if self.in_headers:
                end = data.find(b"\r\n\r\n", position)
                if end < 0:
                    self.unread = data[position:]
                    if len(self.unread) > MAX_PART_HEADER_BYTES:
                        raise self.refusal("An upload's part headers are too long.")
                    return
                if not _names_a_file(data[position:end]):
                    raise self.refusal("Each part of an upload must be a file with a file name; a form field was sent.")
                self.in_headers, position = False, end + 4
                continue
            found = data.find(self.delimiter, position)
            after = found + len(self.delimiter)
            if found < 0 or len(data) < after + 2:  # keep what may begin a delimiter, and the two bytes after it
                self.unread = data[found if found >= 0 else max(position, len(data) - len(self.delimiter) - 1):]
                return
            self.closed = data[after:after + 2] == b"--"  # the closing delimiter: no part follows
            self.in_headers, position = True, after


def _address_problem(scope: Scope) -> tuple[int, str] | None:
    """A URL (path and query) or an address header longer than Gradio can turn into the request's address."""
    if len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b"")) > MAX_ADDRESS_CHARS:
        return 414, f"The URL is too long: at most {MAX_ADDRESS_CHARS} characters."
    if any(name in ADDRESS_HEADERS and len(value) > MAX_ADDRESS_CHARS for name, value in scope.get("headers", ())):
        return 431, f"A host header is too long: at most {MAX_ADDRESS_CHARS} characters."
    try:
        get_request_origin(Request(scope), "")  # what Gradio does with them for every page and every queued event
    except Exception:  # noqa: BLE001 - httpx.InvalidURL for a bad port or host, or anything else it cannot parse
        return 400, "The Host or X-Forwarded-Host header is not a valid host[:port]."
    return None


class UploadQuota:
    """The bytes each client uploaded in the last `window_s` (as long as an upload nobody asks about stays on disk):
    a new upload that would take a client past `max_bytes` is refused. An upload counts at its declared size while
    it streams, so a burst of parallel uploads cannot pass the check together, and at its real size once read."""

    def __init__(self, max_bytes: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes, self.window_s, self.clock = max_bytes, window_s, clock
        self.uploads: dict[str, list[list[float]]] = {}  # client -> [when, bytes] of each recent upload

    def reserve(self, client: str, size: int) -> list[float] | None:
        """Counts an upload of at most `size` bytes for `client` (its entry, to `settle` later); None if refused."""
        now = self.clock()
        if len(self.uploads) > 4096:  # clients long gone: keep the table small
            self.uploads = {c: e for c, e in self.uploads.items() if any(now - when <= self.window_s for when, _ in e)}
        entries = [entry for entry in self.uploads.get(client, []) if now - entry[0] <= self.window_s]
        self.uploads[client] = entries
        if sum(used for _, used in entries) + size > self.max_bytes:
            return None
        entries.append(entry := [now, size])
        return entry

    def used(self, client: str) -> int:
        now = self.clock()
        return int(sum(used for when, used in self.uploads.get(client, []) if now - when <= self.window_s))

    @staticmethod
    def settle(entry: list[float], size: int) -> None:
        entry[1] = size


def refusal_body(status: int, message: str) -> dict:
    """A refused JSON request's answer, as FastAPI words one; a 422 as Gradio words a validator's refusal, which
    gradio_client raises as a `ValidationError` carrying the message (a plain-text body made it fail to parse)."""
    if status == 422:
        return {"detail": [{"__type__": "validate", "is_valid": False, "message": message, "parameter_name": "request"}]}
    return {"detail": message}


def _values_problem(inputs: Sequence, values: list) -> tuple[int, str] | None:
    """Whether `values` could reach a function of these inputs: as many (more are ignored, as Gradio ignores
    them), each what its input's own data model takes, checked as Gradio checks it."""
    if len(values) < len(inputs):
        return 422, f"This endpoint takes {len(inputs)} value(s); the request sent {len(values)}."
    for position, (component, value) in enumerate(zip(inputs, values), start=1):
        data_model = getattr(component, "data_model", None)
        if value is None or data_model is None:
            continue
        try:
            data_model.model_validate(value, context={"validate_meta": True})  # as Gradio validates it
        except Exception:  # noqa: BLE001 - pydantic's ValueError, or Gradio's own check failing on odd shapes
            if getattr(component, "file_count", "single") != "single" and isinstance(value, dict):
                return 422, (f"Value {position} is a list of files, and the request sent one file: send it as a list, "
                             "[handle_file(path)], or [handle_file(a), handle_file(b)] for several.")
            return 422, f"Value {position} is not what this endpoint takes: {UPLOAD_FIRST}"
    return None


class HttpGuard:
    def __init__(self, app: ASGIApp, max_upload_parts: int = 100, max_upload_bytes: int = 256 * 2**20,
                 max_request_bytes: int = 2**20, on_uploaded: Callable[[list[str], str], None] | None = None,
                 endpoint_inputs: Callable[[], Mapping[int, Sequence]] | None = None,
                 api_inputs: Callable[[], Mapping[str, Sequence]] | None = None,
                 file_allowed: Callable[[str], bool] | None = None,
                 direct_fns: Callable[[], Mapping[int, Sequence]] | None = None,
                 known_session: Callable[[str], bool] | None = None,
                 known_event: Callable[[str], bool] | None = None,
                 known_component: Callable[[int], bool] | None = None,
                 api_parameters: Callable[[], Mapping[str, list]] | None = None,
                 free_disk_bytes: Callable[[], int] | None = None, min_free_disk_bytes: int = 2**30,
                 upload_quota: UploadQuota | None = None, client_of: Callable[[Scope], str] | None = None) -> None:
        self.app = app
        self.free_disk_bytes, self.min_free_disk_bytes = free_disk_bytes, min_free_disk_bytes
        self.upload_quota, self.client_of = upload_quota, client_of
        self.max_upload_parts, self.max_upload_bytes = max_upload_parts, max_upload_bytes
        self.max_request_bytes = max_request_bytes
        self.on_uploaded = on_uploaded
        self.endpoint_inputs, self.api_inputs, self.file_allowed = endpoint_inputs, api_inputs, file_allowed
        self.direct_fns, self.known_session, self.known_event = direct_fns, known_session, known_event
        self.known_component = known_component
        self.api_parameters = api_parameters or (lambda: {})

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

        if problem := _address_problem(scope):
            await PlainTextResponse(problem[1], status_code=problem[0])(scope, receive, send_with_headers)
            return
        path = scope["path"].rstrip("/")
        if _relay_or_unused(path) or (scope["method"] == "POST" and path.endswith(CLOSED_ROUTES)):
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send_with_headers)
            return
        named = NAMED_ROUTE.search(path) if scope["method"] == "POST" and self.api_inputs is not None else None
        # Gradio looks the name up before anything else (a 500 and a traceback when it is not there), and /run and
        # /api serve nothing with the queue on: they answer 404 for every name, but for `/run/predict`, where the
        # page sends the events that skip the queue (`direct_fns`: an example's loader), checked with the body.
        if named and (named["route"] == "api" or (named["route"] == "run" and not self._direct_route(path))
                      or (named["route"] != "run" and named["name"] not in self.api_inputs())):
            await PlainTextResponse("Unknown endpoint.", status_code=404)(scope, receive, send_with_headers)
            return
        if problem := self._query_problem(scope, path):
            await JSONResponse(refusal_body(*problem), status_code=problem[0])(scope, receive, send_with_headers)
            return
        media_type, options = parse_options_header(Headers(scope=scope).get("content-type", ""))
        quota_entry, limits, upload = None, None, path.endswith("/upload")
        try:
            if scope["method"] == "POST" and (upload or media_type.startswith(b"multipart/")):
                if self._short_of_disk(scope):
                    await PlainTextResponse("The Space is short of disk space for uploads; try again in a few minutes.",
                                            status_code=503)(scope, receive, send_with_headers)
                    return
                if self.upload_quota is not None and self.client_of is not None and upload:
                    client = self.client_of(scope)
                    quota_entry = self.upload_quota.reserve(client, self._upload_size(scope))
                    if quota_entry is None:
                        await PlainTextResponse(self._over_quota(client), status_code=429)(scope, receive, send_with_headers)
                        return
                # Files go to /upload alone: a multipart body anywhere else gets the small-body limit (FastAPI
                # refuses it, and its refusal quotes the whole body back).
                limits = BodyLimits(options.get(b"boundary"), self.max_upload_parts,
                                    self.max_upload_bytes if upload else self.max_request_bytes, files_only=upload)
                receive = self._counted(scope, receive, limits)
                if self.on_uploaded is not None and upload:
                    client = self.client_of(scope) if self.client_of is not None else UNKNOWN_CLIENT
                    send_tracked = self._reporting_stored_paths(send_tracked, client)
            elif scope["method"] in ("POST", "PUT", "PATCH"):
                receive = self._counted(scope, receive, BodyLimits(None, 0, self.max_request_bytes, multipart=False))
                body = await self._read_body(receive)
                if problem := self._json_problem(body, path):
                    await JSONResponse(refusal_body(*problem), status_code=problem[0])(scope, receive, send_with_headers)
                    return
                receive = self._replaying(body, receive)
            await self.app(scope, receive, send_tracked)
        except (HTTPException, MultiPartException) as refusal:  # a limit passed where Gradio's parser was not reading
            if started:
                raise
            message = refusal.detail if isinstance(refusal, HTTPException) else refusal.message
            await PlainTextResponse(message, status_code=413)(scope, receive, send_with_headers)
        finally:
            if quota_entry is not None:  # what was read is what the disk may hold; a refused body holds nothing
                read = limits.bytes_seen if limits is not None and limits.bytes_seen <= limits.max_bytes else 0
                UploadQuota.settle(quota_entry, read)

    def _upload_size(self, scope: Scope) -> int:
        """An upload's declared size, else (chunked) the largest allowed."""
        length = Headers(scope=scope).get("content-length", "")
        return min(int(length), self.max_upload_bytes) if length.isdigit() else self.max_upload_bytes

    def _over_quota(self, client: str) -> str:
        quota = self.upload_quota
        return (f"You have uploaded {quota.used(client) / 2**20:.0f} MB in the last {quota.window_s / 60:g} minutes; one "
                f"client may upload at most {quota.max_bytes / 2**20:g} MB in that time. Try again in a few minutes.")

    def _short_of_disk(self, scope: Scope) -> bool:
        """Uploads nobody asks about are kept for minutes: one client sending fast could fill the disk. An upload
        must leave `min_free_disk_bytes` free even at its declared (else its largest allowed) size."""
        if self.free_disk_bytes is None:
            return False
        return self.free_disk_bytes() - self._upload_size(scope) < self.min_free_disk_bytes

    def _json_problem(self, body: bytes, path: str) -> tuple[int, str] | None:
        """Why a JSON body must not reach Gradio, read as FastAPI reads it (json.loads on the bytes: any UTF
        encoding, a BOM); None to hand it on. Malformed JSON is left to FastAPI's own 422."""
        try:
            content = json.loads(body, parse_constant=_non_finite, parse_float=_finite_float)
            json.dumps(content, ensure_ascii=False).encode()  # a lone surrogate ("\\udc80") breaks Gradio's stats later
        except NonFiniteNumber:  # FastAPI would take it, and Gradio answer a 500 with two tracebacks
            return 422, "Numbers in the request must be finite."
        except RecursionError:
            return 400, "The request's JSON is nested too deeply."
        except UnicodeError:  # FastAPI's error handler would quote the undecodable body in a traceback
            return 400, NOT_TEXT
        except ValueError:  # not JSON: FastAPI answers, and its error handler quotes the body as UTF-8 text
            try:
                body.decode()
            except UnicodeDecodeError:
                return 400, NOT_TEXT
            return None
        items, files, paths = _count(content)
        if files > self.max_upload_parts:
            # Gradio prepares every file a request names before any check of the app runs (seconds for thousands)
            return 413, (f"Too many files in one request: {files:,} named, at most {self.max_upload_parts} at a time. "
                         "Remove some, or send them in several requests (batches).")
        if items > MAX_JSON_ITEMS:  # Gradio's validation error lists every bad item, in its answer and its log
            return 413, f"Too many values in one request: {MAX_JSON_ITEMS} is the maximum allowed size."
        if any(isinstance(p, str) and "://" in p for p in paths):
            return 422, ("This Space does not download files from URLs (a download of any size or length would hold "
                         "its worker): save the image, and send the local file (gradio_client's handle_file uploads it).")
        if self.file_allowed is not None and not all(isinstance(p, str) and self.file_allowed(p) for p in paths):
            return 422, f"The request refers to a file this Space did not receive: {UPLOAD_FIRST}"
        session = content.get("session_hash") if isinstance(content, dict) else None
        if isinstance(session, str) and len(session) > MAX_SESSION_HASH:
            return 422, f"The session_hash is too long: at most {MAX_SESSION_HASH} characters."
        if self.known_component is not None and path.endswith("/component_server"):
            component = content.get("component_id") if isinstance(content, dict) else None
            if not (type(component) is int and self.known_component(component)):  # Gradio: a KeyError, a 500
                return 404, "Unknown component."
        if self._direct_route(path):
            return self._direct_problem(content)
        if self.endpoint_inputs is not None and path.endswith("/queue/join"):
            return self._join_problem(content)
        named = NAMED_ROUTE.search(path)
        if self.api_inputs is not None and named and named["route"] == "call":
            return self._call_problem(content, self.api_inputs().get(named["name"], ()))
        if self.api_inputs is not None and named and named["route"] == "call/v2":
            return self._named_call_problem(content, named["name"])
        return None

    def _query_problem(self, scope: Scope, path: str) -> tuple[int, str] | None:
        """Ids in the query string: Gradio keeps each upload id it is asked about, and answers a stream for a
        session without events with a 404 raised after the response started (a traceback in the log each time)."""
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        for key in ("session_hash", "upload_id"):
            if len(query.get(key, "")) > MAX_SESSION_HASH:
                return 400, f"The {key} is too long: at most {MAX_SESSION_HASH} characters."
        if self.known_session is not None and path.endswith("/queue/data") and not self.known_session(query.get("session_hash", "")):
            return 404, "No event is waiting for this session: join the queue first."
        if self.known_event is not None and scope["method"] == "GET" and (results := RESULTS_ROUTE.search(path)):
            if not self.known_event(results["event_id"]):
                return 404, "No such event is waiting: send the request (POST) first, then read its results once."
        return None

    def _direct_route(self, path: str) -> bool:
        return self.direct_fns is not None and path.endswith("/run/predict")

    def _direct_problem(self, content) -> tuple[int, str] | None:
        """A call of an event that skips the queue: an example's loader takes the example's number, and answers
        anything else with a 500 and a traceback."""
        try:
            call = PredictBody.model_validate(content)
        except ValueError:
            return None  # Gradio's own 422
        inputs = self.direct_fns().get(call.fn_index) if call.fn_index is not None else None
        if inputs is None:
            return 404, "Unknown endpoint."
        for component, value in zip(inputs, call.data):
            samples = getattr(component, "samples", None)
            if samples is not None and not (type(value) is int and 0 <= value < len(samples)):
                return 422, f"There is no example {json.dumps(value)[:20]}: the examples are numbered 0 to {len(samples) - 1}."
        return _values_problem(inputs, call.data)

    def _join_problem(self, content) -> tuple[int, str] | None:
        """A join read as Gradio reads it (its own model: "7", 7.0 and true are all integers there): refused when
        its fn_index names no endpoint of the app, or its values could not reach the endpoint's function; a join
        the model refuses is left to its 422."""
        try:
            join = PredictBody.model_validate(content)
        except ValueError:
            return None
        if join.fn_index is None:
            return None
        inputs = self.endpoint_inputs().get(join.fn_index)
        if inputs is None:
            return 400, "Unknown endpoint (fn_index)."
        return _values_problem(inputs, join.data)

    def _named_call_problem(self, content, name: str) -> tuple[int, str] | None:
        """`/call/v2/NAME` (the API recorder's cURL) takes `{parameter: value}`: its values put in order as Gradio
        puts them, then checked like any other; Gradio answers a wrong or missing name with a 500 and a traceback."""
        if not isinstance(content, dict):
            return 422, "The request must be a JSON object of the endpoint's parameters by name."
        content = {key: value for key, value in content.items() if key != "oauth_token"}  # Gradio drops it too
        try:
            values = construct_args(self.api_parameters().get(name), (), content)
        except (TypeError, ValueError) as error:
            return 422, str(error)
        return _values_problem(self.api_inputs().get(name, ()), values)

    @staticmethod
    def _call_problem(content, inputs: Sequence) -> tuple[int, str] | None:
        """`/call/NAME` takes `{"data": [values]}`; Gradio answers a body of any other shape, or one short of values,
        with a 500 and a traceback."""
        if not isinstance(content, dict) or not isinstance(content.get("data"), list):
            return 422, 'The request must be a JSON object with a "data" list of the endpoint\'s values.'
        return _values_problem(inputs, content["data"])

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

    def _reporting_stored_paths(self, send: Send, client: str) -> Send:
        """Reads the upload's answer (a small JSON list of stored paths) as it passes, and reports the paths and
        the client that sent them."""
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
                        self.on_uploaded([path for path in paths if isinstance(path, str)], client)
            await send(message)

        return reporting

    @staticmethod
    def _counted(scope: Scope, receive: Receive, limits: BodyLimits) -> Receive:
        length = Headers(scope=scope).get("content-length")
        if length and length.isdigit() and int(length) > limits.max_bytes:
            raise limits.too_large()  # refused before a byte of the body is read

        ended = False

        async def counted() -> Message:
            nonlocal ended
            message = await receive()
            if message["type"] == "http.request":
                limits.feed(message.get("body", b""))
                ended = not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and not ended and limits.multipart:
                # Gradio's parser deletes its spool files on its own errors only, not when the client goes away
                raise limits.refusal("Upload interrupted: the client went away before the end of the body.")
            return message

        return counted
