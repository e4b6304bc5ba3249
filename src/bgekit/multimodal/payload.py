"""Images as an HTTP request carries them: data URIs or base64, and server-side files only when allowed.

The server's embedding routes can hand each request image to :func:`decode_image_reference` and pass the
result (bytes, or a checked path) to ``MultimodalEmbedder.encode(images=...)``. Nothing is fetched from a
URL, and a file on the server is read only when the server names a folder for them (``file_root``) and
the path resolves inside it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from typing import Any

from bgekit.errors import InputError

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""Largest encoded image a request may carry (20 MiB), before decoding."""

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,"
)


def decode_image_reference(
    value: Any,
    where: str,
    *,
    file_root: str | os.PathLike[str] | None = None,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> bytes | str:
    """One request image as the embedder takes it: the file's bytes, or a path checked against ``file_root``.

    Args:
        value: a data URI (``"data:image/png;base64,..."``, as Cohere's and OpenAI's image inputs send),
            a bare base64 string, or ``{"path": "..."}`` for a file on the server.
        where: the field at fault in error messages (``"input[3].image"``).
        file_root: the only folder whose files a request may name (``None``: no files at all).
        max_bytes: the most bytes an image may have once base64-decoded.

    Raises:
        InputError: naming ``where`` and what is wrong (a URL, invalid base64, too large, a file outside
            ``file_root`` or with files not allowed).

    Example:
        >>> decode_image_reference("data:image/png;base64,iVBORw0KGgo=", "image")[:4]
        b'\\x89PNG'
    """
    if isinstance(value, Mapping):
        if set(value) != {"path"} or not isinstance(value["path"], str):
            raise InputError(f"{where}: an image object takes one string field 'path', got {sorted(value)}")
        return _server_file(value["path"], where, file_root)
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a data URI or base64 string, got {type(value).__name__}")
    text = value.strip()
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        raise InputError(
            f"{where}: images are not fetched from URLs ({text[:40]!r}); send the image as a base64 data URI"
        )
    if text.startswith("data:"):
        match = _DATA_URI.match(text)
        if match is None or not match.group("b64"):
            raise InputError(f"{where}: expected a base64 data URI (data:image/...;base64,...)")
        mime = match.group("mime") or ""
        if mime and not mime.startswith("image/"):
            raise InputError(f"{where}: the data URI holds {mime!r}, not an image")
        text = text[match.end() :]
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise InputError(f"{where}: the image is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: not valid base64") from None
    if not data:
        raise InputError(f"{where}: the image is empty")
    if len(data) > max_bytes:
        raise InputError(f"{where}: the image is larger than {max_bytes} bytes")
    return data


def _server_file(path: str, where: str, file_root: str | os.PathLike[str] | None) -> str:
    if file_root is None:
        raise InputError(f"{where}: this server reads no image files; send the image as a base64 data URI")
    root = os.path.realpath(os.fspath(file_root))
    resolved = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, resolved]) != root:
        raise InputError(f"{where}: {path!r} is outside the folder this server reads images from")
    return resolved
