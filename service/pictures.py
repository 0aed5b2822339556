"""Web-sized copies of uploaded pictures, kept in the store beside their artworks and served
at GET /items/{id}/image, so a storefront can show the work without keeping the original.

The copy is made from the picture ingest already decoded: no second decode, and never from
what a client could not have uploaded (the checks of `service.ingest.decode` come first).
The demo market's works are not uploaded pictures: they are repainted from their style.
"""

from __future__ import annotations

import hashlib
import io
import math
from functools import lru_cache

import numpy as np
from PIL import Image

from curatornet.painter import looks, paint
from service.stores.base import Item, Picture

# The longer side of a stored copy: a storefront grid or a detail view, not a print.
MAX_SIDE = 512
# JPEG, not WebP: measured on a 512 x 341 photograph, WebP at the same quality was 13 % smaller
# (36 KB against 42 KB) but took 35 times as long to encode (41 ms against 1.2 ms), a cost
# every picture upload and the demo's 13,297 paintings would pay.
FORMAT, MEDIA_TYPE = "JPEG", "image/jpeg"
QUALITY = 80
# Browsers and proxies may reuse a picture this long without asking: an id's picture changes
# only when the work is uploaded again, a rare correction, so a re-upload shows everywhere
# within five minutes; after that a check costs a 304 with no body, thanks to the ETag.
CACHE_CONTROL = "public, max-age=300"


def web_copy(image: Image.Image) -> Picture:
    """`image` (RGB) at most MAX_SIDE pixels on its longer side, in the web format."""
    copy = image.copy()
    copy.thumbnail((MAX_SIDE, MAX_SIDE))  # keeps the aspect ratio; never enlarges
    buffer = io.BytesIO()
    copy.save(buffer, FORMAT, quality=QUALITY)
    return Picture(buffer.getvalue(), MEDIA_TYPE)


# The metadata field where `--demo` keeps each work's latent style, so that its painting is
# repainted on demand (GET /items/{id}/image) instead of stored: 13,297 stored paintings
# would cost about 310 MiB and 94 to 150 s of the first start-up (README); a repainting costs
# 7 to 11 ms, once per process for the REPAINTED most recently shown.
PAINTED_STYLE = "painted_style"
STYLE_DIM = 16  # the synthetic market's style_dim
# Beyond this a style is nothing the generator makes, and the painter's softmax overflows.
MAX_STYLE = 20.0
REPAINTED = 2048  # about 50 MB of pictures


def repainted(item: Item) -> Picture | None:
    """The generator's painting of a work whose metadata carries a PAINTED_STYLE, as the demo
    market's works do; None for any other work, and for a style the generator could not have
    made (a client's metadata is free)."""
    style = item.metadata.get(PAINTED_STYLE)
    if not isinstance(style, list) or len(style) != STYLE_DIM:
        return None
    if not all(isinstance(v, int | float) and math.fabs(v) <= MAX_STYLE for v in style):
        return None
    return _painting(item.id, tuple(float(v) for v in style))


@lru_cache(maxsize=REPAINTED)
def _painting(item_id: str, style: tuple[float, ...]) -> Picture:
    return web_copy(paint(looks(np.array([style]))[0], item_id))


def etag(picture: Picture) -> str:
    """A strong validator: a hash of the bytes, so it changes exactly when they do, and every
    process serving the store gives the same one."""
    return '"' + hashlib.sha256(picture.data).hexdigest()[:32] + '"'


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """Whether an If-None-Match header names `tag` (or is `*`): the client's copy is current.
    Compared weakly, as RFC 9110 asks for If-None-Match, so a proxy's W/ prefix still matches."""
    if if_none_match is None:
        return False
    sent = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in sent or tag in sent
