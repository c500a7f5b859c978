"""The image behind the OpenAPI document's examples, so that every example works as sent.

A 64 × 48 PNG (a yellow disc on blue): ``POST /embed``'s example uploads it, and the
``/segment`` and ``/segment/everything`` examples name it by its ``image_id``.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

EXAMPLE_IMAGE_BASE64: Final = (
    "iVBORw0KGgoAAAANSUhEUgAAAEAAAAAwCAIAAAAuKetIAAAAxklEQVR42u2ZzRFAUAyEvYxilKAWRTgrwVkFylGW"
    "AjiQbEQm+45m7Nsv2fF+tGHau8xDuuSDAAQgAAFiR++ke8zr9eG4LfCJGnYhu/XtSgIDeGgdjiFR7tVvgTsAMWFp"
    "hYS7N+oUXgdQ5TeqyR/cWzRLRsij/GplbubSAfjlR6fPCBGAAARIBuBxrrXoM0IZAfxSpFCuGiGPJug05eP54Gq1"
    "v0KoJlh0MFeL6kOCvQQSWEJIA3k7/YYkwf8B7oUIQAACVAM4AYlkQmtIFXE3AAAAAElFTkSuQmCC"
)
EXAMPLE_IMAGE_ID: Final = hashlib.sha256(base64.b64decode(EXAMPLE_IMAGE_BASE64)).hexdigest()
EXAMPLE_WIDTH: Final = 64
EXAMPLE_HEIGHT: Final = 48
