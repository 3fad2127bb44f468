"""Images inside benchmark files: base64 strings and paths confined to the data folder.

Every function here raises :class:`ValueError` with a short reason; the readers turn it into a
:class:`encslim.errors.DataError` that names the file and the row.
"""

import base64
import binascii
import io
import re
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# a data URI prefix, e.g. "data:image/png;base64,"
_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
# shortest base64 string taken as an image: a 1x1 PNG is ~90 characters of base64
MIN_BASE64_LENGTH = 64


def looks_like_base64(text):
    """True when ``text`` is a data URI, or long and without a dot (base64 never holds one).

    Paths such as ``images/0001.png`` contain a dot, so they are never mistaken for base64;
    a long dot-less string that is not valid base64 is reported as broken base64.
    """
    text = text.strip()
    if _DATA_URI.match(text):
        return True
    return len(text) >= MIN_BASE64_LENGTH and "." not in text


def decode_base64_image(text):
    """Decode a base64 string (or data URI) into an RGB ``PIL.Image``.

    Args:
        text: standard or URL-safe base64, with or without a ``data:image/...;base64,`` prefix.

    Returns:
        PIL.Image.Image in RGB mode, fully loaded.

    Raises:
        ValueError: the text is not base64 or does not hold a readable image.
    """
    payload = _DATA_URI.sub("", text.strip())
    payload = "".join(payload.split())
    try:
        raw = base64.b64decode(payload.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"broken base64 image ({err})") from err
    return _open(io.BytesIO(raw), "base64 data")


def resolve_image_path(path, root):
    """Resolve ``path`` (relative to ``root`` or absolute) and check it stays inside ``root``.

    Symbolic links are followed before the check, so a link pointing outside the data folder
    is refused as well.

    Args:
        path: the path as written in the data file.
        root: the data folder (the folder of the data file).

    Returns:
        pathlib.Path, absolute and resolved.

    Raises:
        ValueError: the path escapes ``root`` or names no file.
    """
    root = Path(root).resolve()
    resolved = (root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"image path '{path}' escapes the data folder {root}")
    if not resolved.is_file():
        raise ValueError(f"image file '{path}' not found in {root}")
    return resolved


def load_image_file(path):
    """Read an image file into an RGB ``PIL.Image`` (fully loaded, file closed).

    Raises:
        ValueError: the file is not a readable image.
    """
    with open(path, "rb") as f:
        return _open(f, f"image file '{Path(path).name}'")


def _open(stream, what):
    try:
        with Image.open(stream) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{what} is not a readable image ({type(err).__name__})") from err
