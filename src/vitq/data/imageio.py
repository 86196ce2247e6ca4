"""Reading one image safely: RGB always, decompression bombs refused, the path named on failure."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from ..errors import DataError

# PIL warns above MAX_IMAGE_PIXELS and raises above twice that; treat the warning as an error too.
MAX_PIXELS = 64_000_000


class BadImage(DataError):
    """An image that cannot be decoded; carries the path so callers can skip and count it."""

    def __init__(self, where: str, why: str):
        self.where, self.why = where, why
        super().__init__(
            f"cannot read image {where}: {why}",
            hint="remove or replace the file, or pass --skip-bad to skip unreadable images and count them",
        )

    def __reduce__(self):  # DataLoader workers pickle exceptions back to the main process
        return (BadImage, (self.where, self.why))


def load_rgb(data: bytes | str, where: str | None = None) -> Image.Image:
    """Decode an image from bytes or a path and return it as RGB (greyscale, CMYK, 16-bit, palette all work)."""
    where = where or (data if isinstance(data, str) else "<bytes>")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
            with Image.open(source) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImage(where, f"{img.width}x{img.height} pixels is over the limit of {MAX_PIXELS:,} (a decompression bomb?)")
                img.load()
                return _to_rgb(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(where, f"too many pixels ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        if isinstance(data, str) and isinstance(err, FileNotFoundError):
            raise BadImage(where, "file not found") from None
        raise BadImage(where, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale (PIL may open it as 32-bit "I"): map 0..65535 onto 0..255 instead of
        # clipping every value above 255 to white; values that already fit 8 bits stay as they are.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        if arr.max() > 255:
            arr = arr * (255.0 / 65535.0)
        img = Image.fromarray(np.rint(arr).clip(0, 255).astype("uint8"), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")
