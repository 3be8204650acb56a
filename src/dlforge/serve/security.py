"""Safe defaults of the server: API keys, loopback-only binding, body and image-size limits, headers.

Everything here is plain ASGI or a small helper, so the checks run before FastAPI parses anything.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import stat
import warnings
import zlib
from pathlib import Path

from dlforge.core.errors import DlforgeError

# Routes an orchestrator must reach without credentials (Kubernetes probes), and the web page's static
# files: the same bytes for every model, holding no model data; the page asks for the key itself.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
MIN_KEY_LENGTH = 16
KEY_HINT = "make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\" > api.key"


class ServeError(DlforgeError):
    """The server cannot start as configured (unsafe binding, unreadable key file, ...)."""


def load_api_keys(path: str | Path) -> list[bytes]:
    """Keys from a file, one per line (several allow rotation); blank lines and #-comments are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServeError(f"cannot read the API key file: {exc.strerror}", where=str(path), hint=KEY_HINT) from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ServeError("the API key file holds no key", where=str(path), hint=KEY_HINT)
    short = [i + 1 for i, k in enumerate(keys) if len(k) < MIN_KEY_LENGTH]
    if short:
        raise ServeError(f"API key(s) number {short} are shorter than {MIN_KEY_LENGTH} characters: too easy to guess",
                         where=str(path), hint=KEY_HINT)
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(f"{path} is readable by other users, who can then call the API; run: chmod 600 {path}",
                      stacklevel=2)
    return [k.encode("utf-8") for k in keys]


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname that may resolve anywhere: treat it as exposed


def check_binding(host: str, *, has_key: bool, insecure: bool) -> None:
    """Refuse to expose an unauthenticated model beyond this machine unless explicitly told to."""
    if not is_loopback(host) and not has_key and not insecure:
        raise ServeError(
            f"refusing to listen on {host} without an API key: anyone who can reach this address could use the model",
            where="--host", hint="add --api-key-file FILE (recommended), or pass --insecure if a gateway in front "
                                 "authenticates callers")


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


def key_allowed(header: bytes | None, keys: list[bytes]) -> bool:
    """An Authorization header value holds one of `keys` as a bearer token."""
    if not header or not header[:7].lower() == b"bearer ":
        return False
    token = header[7:].strip()
    # Compare against every key without stopping early, so timing does not tell which one nearly matched.
    matches = [hmac.compare_digest(token, key) for key in keys]
    return any(matches)


class ApiKeyAuth:
    """Every route except PUBLIC_PATHS needs `Authorization: Bearer <key>`; keys compare in constant time."""

    def __init__(self, app, keys: list[bytes]):
        self.app = app
        self.keys = keys

    def allowed(self, header: bytes | None) -> bool:
        return key_allowed(header, self.keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in PUBLIC_PATHS \
                or scope["path"].startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if not self.allowed(header):
            return await _send_json(send, 401, {"detail": "missing or invalid API key: send Authorization: Bearer <key>"},
                                    [(b"www-authenticate", b'Bearer realm="dlforge"')])
        return await self.app(scope, receive, send)


class ContentLengthLimit:
    """413 before reading a body whose declared length exceeds the limit (streamed bodies: `read_body`)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            if declared is not None and not declared.strip().isdigit():
                return await _send_json(send, 400, {"detail": "invalid Content-Length header"},
                                        [(b"connection", b"close")])
            if declared is not None and int(declared) > self.max_bytes:
                return await _send_json(send, 413, {"detail": body_too_large(self.max_bytes)},
                                        [(b"connection", b"close")])
        return await self.app(scope, receive, send)


def body_too_large(max_bytes: int) -> str:
    return f"request body exceeds the limit of {max_bytes:,} bytes (server option --max-body-mb)"


class BodyTooLarge(Exception):
    pass


class BadEncoding(Exception):
    """The body's Content-Encoding is not supported (415), or the compressed bytes are invalid (400)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


# zlib's wbits: gzip framing, zlib framing (what HTTP calls deflate).
ENCODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


class BodyReader:
    """Collects a body chunk by chunk under `max_bytes`, inflating gzip or deflate (Content-Encoding) as it arrives.

    The limit holds for the inflated size: a decompression bomb stops at `max_bytes` + 1 bytes of output, never
    further. Raises BadEncoding (415) for an encoding it does not know, BodyTooLarge past the limit.
    """

    __slots__ = ("encoding", "max_bytes", "inflater", "chunks", "size", "received")

    def __init__(self, encoding: str, max_bytes: int):
        encoding = encoding.strip().lower()
        if encoding not in ("", "identity", *ENCODINGS):
            raise BadEncoding(415, f"Content-Encoding '{encoding}' is not supported; send the body as is, gzip or deflate")
        self.encoding, self.max_bytes = encoding, max_bytes
        self.inflater = zlib.decompressobj(ENCODINGS[encoding]) if encoding in ENCODINGS else None
        self.chunks: list[bytes] = []
        self.size = self.received = 0

    def add(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise BodyTooLarge()
        if self.inflater is not None and chunk:
            try:
                chunk = self.inflater.decompress(chunk, self.max_bytes - self.size + 1)  # at most one byte past
            except zlib.error:
                raise BadEncoding(400, f"the body is not valid {self.encoding} data") from None
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise BodyTooLarge()
        self.chunks.append(chunk)

    def body(self) -> bytes:
        if self.inflater is not None and not self.inflater.eof:
            raise BadEncoding(400, f"the {self.encoding} body is incomplete")
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


async def read_body(request, max_bytes: int) -> bytes:
    """The whole body, stopping with BodyTooLarge as soon as it passes `max_bytes` (chunked uploads too).

    A gzip or deflate body (Content-Encoding) is inflated as it arrives, and the limit holds for the
    inflated size: a decompression bomb stops at `max_bytes` + 1 bytes of output, never further.
    """
    reader = BodyReader(request.headers.get("content-encoding", "identity"), max_bytes)
    async for chunk in request.stream():
        reader.add(chunk)
    body = reader.body()
    request._body = body  # starlette's cache: request.form() parses these bytes instead of the spent stream
    return body


async def receive_body(receive, encoding: str, max_bytes: int) -> bytes:
    """`read_body` on a raw ASGI `receive`: the same limits and encodings; ClientDisconnect if the client leaves."""
    from starlette.requests import ClientDisconnect

    reader = BodyReader(encoding, max_bytes)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] == "http.request":
            reader.add(message.get("body", b""))
            if not message.get("more_body", False):
                return reader.body()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_pixels(data: bytes) -> int | None:
    """Width x height of a PNG from its IHDR chunk, which the format requires first: 13 bytes at a fixed offset,
    checked against the chunk's CRC. None when the bytes are no PNG or that chunk is not intact (Pillow decides)."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        return None
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return width * height if width and height else None


def image_pixels(data: bytes) -> int:
    """Width x height from the image header only (no decoding), so a decompression bomb costs nothing. A PNG's
    header is read directly (png_pixels: ~1 us, where opening it with Pillow took ~12 us of the event loop's time per
    request); other formats, and a PNG whose header chunk is damaged, are opened with Pillow."""
    pixels = png_pixels(data)
    if pixels is not None:
        return pixels
    import io

    from PIL import Image

    from dlforge.data.images.decode import pillow_formats

    with Image.open(io.BytesIO(data), formats=pillow_formats(data)) as img:
        return img.width * img.height


CSP = (b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
# Appended to every response's headers (SecurityHeaders; the fast route appends them itself).
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", CSP), (b"referrer-policy", b"no-referrer"))


class SecurityHeaders:
    """nosniff and no framing on every response; a strict Content-Security-Policy on the web page."""

    CSP = CSP

    def __init__(self, app):
        self.app = app
        self.headers = list(SECURITY_HEADERS)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *self.headers]
            await send(message)

        return await self.app(scope, receive, send_with_headers)
