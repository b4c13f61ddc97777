"""Reading one image for `mlp.predict`, refusing what cannot be read correctly.

Pixels come back as floats in [0, 1], white digit on black like MNIST:

- PNG/JPEG/...: 8-bit grayscale (mode L) / 255; 16-bit grayscale (I;16) / 65535; 32-bit
  integer (I) / 65535 when its values fit 16 bits; float (F) as it is when in [0, 1].
  Other modes (RGB, palette, ...) only with --resize, which converts them to grayscale.
  An image of more than MAX_PIXELS pixels is refused before it is decoded.
- .npy: uint8 / 255; other integer types (and bool) must hold 0..255 and are / 255;
  floats (float16/32/64) must lie in [0, 1]. Anything else is refused.
"""

import warnings
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import check_input_file
from .npz import read_npy_header

#: the most pixels an input image may have (Pillow's own bomb limit is ~89 M)
MAX_PIXELS = 4096 * 4096


def _npy_pixels(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            shape, _, _ = read_npy_header(f)
            if int(np.prod(shape, dtype=object)) > MAX_PIXELS:   # refused before it is read
                raise UserError(f"{path}: array of shape {shape}, more than the {MAX_PIXELS:,} pixels allowed")
            f.seek(0)
            arr = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npy array ({exc}); save it with numpy.save") from None
    return scale_pixels(arr, path)


def scale_pixels(arr: np.ndarray, path) -> np.ndarray:
    """An .npy array's values as pixels in [0, 1]: uint8 and other integers in 0..255 are divided
    by 255, floats must already lie in [0, 1]; anything else is refused."""
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise UserError(f"{path}: {arr.dtype} values from {arr.min()} to {arr.max()}; integer pixels must lie "
                            "in 0..255 (they are divided by 255); rescale them or give floats in [0, 1]")
        return arr.astype(np.float64) / 255
    if np.issubdtype(arr.dtype, np.floating):
        pixels = arr.astype(np.float64)
        if not np.isfinite(pixels).all():
            raise UserError(f"{path}: holds NaN or inf; give finite pixel values")
        if pixels.size and (pixels.min() < 0 or pixels.max() > 1):
            raise UserError(f"{path}: {arr.dtype} values from {pixels.min():g} to {pixels.max():g}; float pixels "
                            "must lie in [0, 1]; divide by 255 (8-bit) or 65535 (16-bit) first")
        return pixels
    raise UserError(f"{path}: array of {arr.dtype}; give uint8 pixels or floats in [0, 1]")


def _image_pixels(path: Path, resize: bool, note: list) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.size[0] * img.size[1] > MAX_PIXELS:
                    raise UserError(f"{path}: {img.size[0]}x{img.size[1]} pixels, more than the {MAX_PIXELS:,} "
                                    "allowed; shrink it first")
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{path}: refused as a decompression bomb ({exc}); shrink it first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UserError(f"{path}: not a readable image ({exc}); give a PNG, JPEG or .npy file") from None
    if img.mode == "L":
        return np.asarray(img, dtype=np.float64) / 255
    if img.mode.startswith("I;16") or img.mode == "I":
        pixels = np.asarray(img).astype(np.float64)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise UserError(f"{path}: 32-bit pixels from {pixels.min():g} to {pixels.max():g}; give 8- or 16-bit "
                            "grayscale")
        return pixels / 65535
    if img.mode == "F":
        pixels = np.asarray(img, dtype=np.float64)
        if not np.isfinite(pixels).all() or (pixels.size and (pixels.min() < 0 or pixels.max() > 1)):
            raise UserError(f"{path}: float pixels outside [0, 1] (or NaN); give 8- or 16-bit grayscale")
        return pixels
    if not resize:
        raise UserError(f"{path}: image mode {img.mode}, the model needs 8-bit grayscale (mode L); "
                        "convert it, or pass --resize to convert it here")
    note.append(f"converted {img.mode} to grayscale")
    return np.asarray(img.convert("L"), dtype=np.float64) / 255


def load_image(path, shape: tuple, *, resize: bool, invert: bool) -> tuple[np.ndarray, str | None]:
    """(pixels in [0, 1] of `shape`, a note on what was changed or None)."""
    path = check_input_file(path, "image")
    note = []
    if path.suffix.lower() == ".npy":
        pixels = _npy_pixels(path)
        if pixels.size == int(np.prod(shape)) and (pixels.ndim == 1 or pixels.shape == tuple(shape)):
            pixels = pixels.reshape(shape)
        elif not (resize and pixels.ndim == 2):
            raise UserError(f"{path}: array of shape {pixels.shape}, the model needs {tuple(shape)} "
                            f"(or {int(np.prod(shape))} values); pass --resize to resize a 2-D array")
    else:
        pixels = _image_pixels(path, resize, note)
    if pixels.shape != tuple(shape):
        if len(shape) != 2:
            raise UserError(f"{path}: shape {pixels.shape}, the model needs {int(np.prod(shape))} values")
        if not resize or pixels.ndim != 2:
            raise UserError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, the model needs "
                            f"{shape[1]}x{shape[0]}; pass --resize to resize it")
        from PIL import Image

        note.append(f"resized {pixels.shape[1]}x{pixels.shape[0]} to {shape[1]}x{shape[0]}")
        img = Image.fromarray(pixels.astype(np.float32), mode="F")
        pixels = np.clip(np.asarray(img.resize((shape[1], shape[0]), Image.LANCZOS), dtype=np.float64), 0, 1)
    if invert:
        pixels = 1.0 - pixels
    return pixels, ("; ".join(note) or None)


def looks_wrong(pixels: np.ndarray) -> str | None:
    """A warning for an input unlike MNIST's digits (white strokes on a black background,
    mean pixel ~0.13): nearly uniform (blank), or mostly light (a dark digit on light)."""
    if float(pixels.max() - pixels.min()) < 0.05:
        return f"looks blank (all pixels near {float(pixels.mean()):.2f}); the prediction means little"
    if float(np.median(pixels)) > 0.5:
        return "looks inverted (a dark digit on a light background); pass --invert if it is"
    return None
