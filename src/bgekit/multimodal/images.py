"""Reading images for multimodal embedders: file paths, bytes, PIL images and arrays, checked item by item.

Every image of a call is checked before any model runs, and one :class:`ImageInputError` names every item
at fault (its position, its path when it has one, and why), so a bad file never costs the work done on
the others and the caller can drop or fix all of them at once.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bgekit.errors import ConfigError, InputError

CONVERTIBLE_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
"""8-bit modes turned into RGB as the official implementations do (``Image.convert("RGB")``; alpha dropped).

16- and 32-bit integer and float modes (``I``, ``I;16``, ``F``...) are refused: PIL's conversion of them to
RGB clips values instead of scaling them, which would embed a different picture than the one stored.
"""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File names an image folder corpus picks up."""


class ImageInputError(InputError):
    """One or more images of a call cannot be used; ``failures`` lists ``(position, reason)`` for each.

    Example:
        >>> raise ImageInputError("images: 1 image cannot be used: images[2] ...", [(2, "file not found")])
        Traceback (most recent call last):
        ...
        bgekit.multimodal.images.ImageInputError: images: 1 image cannot be used: images[2] ...
    """

    def __init__(self, message: str, failures: Sequence[tuple[int, str]] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)

    def __reduce__(self) -> tuple[object, ...]:
        # keeps ``failures`` when a device-pool worker sends the error back
        return (type(self), (str(self), self.failures), self.__dict__)


def require_pil() -> Any:
    """The ``PIL.Image`` module, or a ConfigError saying which extra to install.

    Example:
        >>> require_pil().new("RGB", (2, 2)).size
        (2, 2)
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is in the dev set CI installs
        raise ConfigError(
            "images need Pillow: pip install 'bgekit[multimodal]' (or pip install pillow)"
        ) from exc
    return Image


def is_image(value: Any) -> bool:
    """True for what ``images=`` takes as one image: a path, bytes, a PIL image or a 2-/3-d array."""
    Image = require_pil()  # noqa: N806 - the module, named as PIL users know it

    if isinstance(value, str | os.PathLike | bytes | Image.Image):
        return True
    return isinstance(value, np.ndarray) and value.ndim in (2, 3)


def describe(value: Any) -> str:
    """A short name of an image input for error messages: its path, or its type and size."""
    if isinstance(value, str | os.PathLike):
        return repr(os.fspath(value))
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, np.ndarray):
        return f"<array {value.shape} {value.dtype}>"
    size = getattr(value, "size", None)
    return f"<{type(value).__name__} {size}>" if size is not None else f"<{type(value).__name__}>"


def to_rgb(value: Any) -> Any:
    """One image as an RGB ``PIL.Image``, fully decoded; ``ValueError`` (or ``OSError``) says why not.

    Paths and bytes are opened with PIL (a missing file, an unreadable or truncated file, or one too large
    for PIL's decompression-bomb limit fails here); arrays must be uint8 or bool, (H, W) or (H, W, C)
    with C in 1, 3, 4.

    Example:
        >>> to_rgb(np.zeros((4, 6), np.uint8)).size
        (6, 4)
    """
    from PIL import Image

    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise FileNotFoundError("file not found" if not os.path.exists(path) else "not a file")
        image = _open(path)
    elif isinstance(value, bytes):
        image = _open(io.BytesIO(value))
    elif isinstance(value, Image.Image):
        image = value
        image.load()
    elif isinstance(value, np.ndarray):
        image = _from_array(value)
    else:
        raise TypeError(
            f"{type(value).__name__} is not an image; give a file path, bytes, a PIL image or a uint8 array"
        )
    if image.mode not in CONVERTIBLE_MODES:
        raise ValueError(
            f"unsupported image mode {image.mode!r} (high bit-depth or float pixels); convert it to an 8-bit "
            "RGB or grayscale image first"
        )
    if image.width < 1 or image.height < 1:
        raise ValueError(f"empty image ({image.width}x{image.height} pixels)")
    return image if image.mode == "RGB" else image.convert("RGB")


def _open(source: Any) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(source)
        image.load()  # decode now: a truncated or damaged file fails here, not in the middle of a batch
    except UnidentifiedImageError:
        raise ValueError("not an image file PIL can read (unknown format, or corrupt)") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"too large: {exc}") from None
    except (OSError, SyntaxError) as exc:  # PIL raises SyntaxError for some broken headers
        raise ValueError(f"corrupt or truncated image ({exc})") from None
    return image


def _from_array(array: np.ndarray) -> Any:
    from PIL import Image

    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ValueError(
            f"array of dtype {array.dtype}; give uint8 pixels (e.g. (a * 255).round().astype(np.uint8))"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), mode="L")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB" if array.shape[2] == 3 else "RGBA")
    raise ValueError(f"array of shape {array.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")


def check_images(images: Sequence[Any], what: str = "images") -> list[Any]:
    """Decode every image (``None`` entries are kept as ``None``) and return what the model will read.

    Paths come back as they are (re-read in the batch that needs them, so a corpus of photos is never
    held decoded in memory); in-memory images come back as RGB ``PIL`` images.

    Raises:
        ImageInputError: naming every image that cannot be used, its position and the reason.

    Example:
        >>> check_images([np.zeros((4, 4, 3), np.uint8)])[0].mode
        'RGB'
    """
    out: list[Any] = []
    failures: list[tuple[int, str]] = []
    for position, value in enumerate(images):
        if value is None:
            out.append(None)
            continue
        try:
            image = to_rgb(value)
        except (OSError, ValueError, TypeError) as exc:
            failures.append((position, f"{what}[{position}] {describe(value)}: {exc}"))
            out.append(None)
            continue
        is_path = isinstance(value, str | os.PathLike)
        out.append(os.fspath(value) if is_path else image)
        if is_path:
            image.close()
    if failures:
        shown = "; ".join(reason for _, reason in failures[:10])
        more = f"; ... ({len(failures)} in all)" if len(failures) > 10 else ""
        raise ImageInputError(
            f"{what}: {len(failures)} of {len(images)} image(s) cannot be used, nothing was encoded: "
            f"{shown}{more}",
            failures,
        )
    return out
