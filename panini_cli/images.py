"""Reading and writing images safely.

Why this module exists: users feed whatever is on their disk (phone JPEGs rotated by
EXIF, PNGs with transparency, 16-bit TIFF scans, half-downloaded files, files that are
not images at all). The anchor tools crash on these or silently drop alpha and depth.
Here every file either decodes into an `Image` that remembers its depth, alpha and
greyness, or fails with an `ImageError` whose message is one line naming the file.

16-bit policy: the face model only ever sees 8-bit BGR (`to_bgr8`). For 16-bit inputs
the pipeline pastes the restored 8-bit face onto the 16-bit frame from `to_bgr(image)`
(`faces.paste_back` scales it by 257), so every pixel outside the faces keeps its full
16-bit value; `from_bgr` then restores grey/alpha and the file is written as 16-bit
PNG/TIFF (JPEG, WebP and BMP cannot hold 16 bits and get rounded to 8).
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from .image_headers import decoder_orients, orient, parse_header

DEFAULT_MAX_PIXELS = 100_000_000
EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp",
              ".tif": "tiff", ".tiff": "tiff", ".webp": "webp"}
_UMASK = os.umask(0o022)
os.umask(_UMASK)
if "OPENCV_LOG_LEVEL" not in os.environ:  # we report decode failures ourselves, in one line
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class ImageError(Exception):
    """A file that cannot be used; str() is one line: '<path>: <reason>'."""

    def __init__(self, path, reason: str):
        super().__init__(path, reason)          # (path, reason) args keep it picklable for workers
        self.path = Path(path) if path is not None else None
        self.reason = _one_line(str(reason))

    def __str__(self) -> str:
        return f"{_one_line(os.fspath(self.path)) if self.path is not None else '<memory>'}: {self.reason}"


def _one_line(s: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


@dataclass
class Image:
    """Decoded pixels plus what is needed to write the result back in the same form."""
    pixels: np.ndarray            # HxWx3 BGR or HxW grey, uint8 or uint16, upright
    alpha: np.ndarray | None      # HxW, same dtype as pixels, or None
    bit_depth: int                # 8 or 16
    is_grey: bool                 # stored as a single grey channel
    path: Path | None = None
    format: str = ""              # png, jpeg, bmp, tiff, webp
    orientation: int = 1          # EXIF orientation we applied (1 = none)

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


# ---------------------------------------------------------------- reading
def read_image(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Decode a png/jpg/bmp/tif/webp file upright; raise ImageError with one clear line."""
    p = Path(path)
    try:
        if p.is_dir():
            raise ImageError(p, "is a folder, not an image file")
        if p.stat().st_size == 0:
            raise ImageError(p, "empty file (0 bytes)")
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(p, "no such file") from None
    except OSError as e:
        raise ImageError(p, f"cannot read ({e.strerror or e})") from None
    return decode_image(data, p, max_pixels)


def decode_image(data: bytes, path=None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Decode bytes; the pixel limit is checked from the header before full decode."""
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    h = parse_header(data)
    if h.problem:
        raise ImageError(path, h.problem)
    _check_size(path, h.width, h.height, max_pixels)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise ImageError(path, f"corrupt or truncated {h.fmt.upper()} data (the decoder gave up)")
    _check_size(path, arr.shape[1], arr.shape[0], max_pixels)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageError(path, f"unsupported sample type {arr.dtype} (only 8- and 16-bit integer images)")
    alpha = None
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr, alpha = arr[..., :-1], arr[..., -1]
    if arr.ndim == 3 and (arr.shape[2] == 1 or h.grey):
        arr = arr[..., 0]
    o = 1 if decoder_orients(h.fmt) else h.orientation
    if o != 1:
        arr = orient(arr, o)
        alpha = None if alpha is None else orient(alpha, o)
    return Image(np.ascontiguousarray(arr), None if alpha is None else np.ascontiguousarray(alpha),
                 16 if arr.dtype == np.uint16 else 8, arr.ndim == 2, None if path is None else Path(path),
                 h.fmt, h.orientation)


def _check_size(path, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels and w * h > max_pixels:
        raise ImageError(path, f"too large: {w}x{h} = {w * h / 1e6:.1f} MP exceeds the limit of "
                               f"{max_pixels / 1e6:g} MP (raise it with --max-pixels)")


# ---------------------------------------------------------------- model view and back
def _to8(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.uint8 else ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def to_bgr(image: Image) -> np.ndarray:
    """3-channel BGR at the image's own depth: the canvas faces are pasted onto."""
    px = image.pixels
    return cv2.cvtColor(px, cv2.COLOR_GRAY2BGR) if px.ndim == 2 else np.ascontiguousarray(px)


def to_bgr8(image: Image) -> np.ndarray:
    """The 8-bit 3-channel BGR view every detector and model expects."""
    return _to8(to_bgr(image))


def from_bgr(bgr: np.ndarray, like: Image) -> Image:
    """Give a processed BGR frame the source's form back: depth, greyness, alpha.

    Alpha is resized when the frame was upscaled. A grey source gives a grey result,
    so a model's colour cast on black-and-white photos never reaches the file.
    """
    px = bgr.astype(np.uint16) * 257 if like.bit_depth == 16 and bgr.dtype == np.uint8 else bgr
    px = _to8(px) if like.bit_depth == 8 else px
    if like.is_grey and px.ndim == 3:
        px = cv2.cvtColor(px, cv2.COLOR_BGR2GRAY)
    alpha = like.alpha
    if alpha is not None and alpha.shape != px.shape[:2]:
        up = px.shape[0] > alpha.shape[0]
        alpha = cv2.resize(alpha, (px.shape[1], px.shape[0]),
                           interpolation=cv2.INTER_CUBIC if up else cv2.INTER_AREA)
    return replace(like, pixels=np.ascontiguousarray(px), alpha=alpha, bit_depth=like.bit_depth)


def looks_grey(bgr: np.ndarray, tol: float = 2.0) -> bool:
    """True for colour-stored photos whose channels are (almost) equal, e.g. old scans."""
    if bgr.ndim == 2:
        return True
    s = bgr[::4, ::4].astype(np.int32)
    return float(np.abs(s[..., 0] - s[..., 1]).mean() + np.abs(s[..., 1] - s[..., 2]).mean()) <= tol


# ---------------------------------------------------------------- writing
class ProtectedPaths:
    """Files that must never be overwritten (the inputs), matched by real path and inode."""

    def __init__(self, paths: Iterable = ()):
        self._real, self._inodes = set(), set()
        for p in paths:
            self._real.add(os.path.realpath(p))
            try:
                st = os.stat(p)
                self._inodes.add((st.st_dev, st.st_ino))
            except OSError:
                pass

    def __contains__(self, path) -> bool:
        if os.path.realpath(path) in self._real:
            return True
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self._inodes


def encode_image(fmt: str, pixels: np.ndarray, alpha: np.ndarray | None = None,
                 quality: int = 95, path=None) -> bytes:
    """Encode to bytes in memory, so a failure never touches the disk."""
    px = np.asarray(pixels)
    if px.dtype not in (np.uint8, np.uint16):
        raise ImageError(path, f"cannot write sample type {px.dtype} (uint8 or uint16 expected)")
    if px.ndim == 3 and px.shape[2] in (1, 2, 4) and alpha is None:
        px, alpha = (px[..., 0], None) if px.shape[2] == 1 else (px[..., :-1], px[..., -1])
    px = px[..., 0] if px.ndim == 3 and px.shape[2] == 1 else px
    if not (px.ndim == 2 or (px.ndim == 3 and px.shape[2] == 3)):
        raise ImageError(path, f"cannot write an array of shape {px.shape}")
    if px.dtype == np.uint16 and fmt not in ("png", "tiff"):
        px = _to8(px)                                  # JPEG/WebP/BMP are 8-bit formats
    if alpha is not None:
        if fmt == "jpeg":
            raise ImageError(path, "JPEG cannot store transparency; write .png, .webp or .tif to keep alpha")
        if alpha.shape != px.shape[:2]:
            raise ImageError(path, f"alpha shape {alpha.shape} does not match pixels {px.shape[:2]}")
        alpha = (alpha.astype(np.uint16) * 257 if alpha.dtype == np.uint8 else alpha) \
            if px.dtype == np.uint16 else _to8(alpha)
        px = np.dstack([cv2.cvtColor(px, cv2.COLOR_GRAY2BGR) if px.ndim == 2 else px, alpha])
    q = int(max(1, min(101 if fmt == "webp" else 100, quality)))     # WebP: 101 = lossless
    params = {"jpeg": [cv2.IMWRITE_JPEG_QUALITY, q] +
              ([cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444] if q >= 90 else []),
              "webp": [cv2.IMWRITE_WEBP_QUALITY, q], "png": [cv2.IMWRITE_PNG_COMPRESSION, 3]}.get(fmt, [])
    try:
        ok, buf = cv2.imencode("." + {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt), px, params)
    except cv2.error as e:
        ok, buf = False, str(e).strip().splitlines()[-1]
    if not ok:
        raise ImageError(path, f"{fmt.upper()} encoder failed{': ' + buf if isinstance(buf, str) else ''}")
    return buf.tobytes()


def write_image(path, pixels: np.ndarray, alpha: np.ndarray | None = None, *, quality: int = 95,
                protected: ProtectedPaths | Iterable = (), overwrite: bool = True) -> Path:
    """Encode by extension and replace `path` atomically; never overwrite a protected file.

    The bytes go to a hidden temp file in the same folder, are fsynced and then
    os.replace()d over the target, so a crash or full disk never leaves half a file.
    """
    p = Path(path)
    fmt = EXTENSIONS.get(p.suffix.lower())
    if fmt is None:
        raise ImageError(p, f"unsupported output format '{p.suffix or '(no extension)'}'; "
                            "use .png, .jpg, .webp, .tif or .bmp")
    _check_target(p, protected, overwrite)
    return write_bytes(p, encode_image(fmt, pixels, alpha, quality, p), protected=protected, overwrite=overwrite)


def _check_target(p: Path, protected, overwrite: bool) -> None:
    if not isinstance(protected, ProtectedPaths):
        protected = ProtectedPaths(protected)
    if p in protected:
        raise ImageError(p, "refusing to overwrite an input file; choose another output folder or suffix")
    if not overwrite and p.exists():
        raise ImageError(p, "already exists (not overwriting)")


def write_bytes(path, data: bytes, *, protected: ProtectedPaths | Iterable = (), overwrite: bool = True) -> Path:
    """Replace `path` by `data` atomically (write_image's second half; also copies an input that
    comes out unchanged, byte for byte)."""
    p = Path(path)
    _check_target(p, protected, overwrite)
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(p.stat().st_mode) if p.exists() else 0o666 & ~_UMASK
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".panini-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
        tmp = None
        _fsync_dir(p.parent)
    except OSError as e:
        raise ImageError(p, f"cannot write ({e.strerror or e})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return p


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- listing inputs
def _natural(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(p))]


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in EXTENSIONS


def list_images(inputs: Iterable, recursive: bool = False, problems: list | None = None,
                exclude: Iterable = ()) -> list[tuple[Path, Path]]:
    """Expand files, folders and glob patterns into (path, relative output path) pairs.

    Folder contents keep their tree relative to the folder; files named directly map to
    their bare name; glob matches are relative to the pattern's fixed leading folder.
    Non-image and hidden files inside folders are skipped silently, but an explicitly
    named problem (missing, non-image, empty pattern or folder, two inputs that would
    write the same output) raises ImageError, or is appended to `problems` if given.
    """
    def report(path, reason):
        if problems is None:
            raise ImageError(path, reason)
        problems.append(ImageError(path, reason))

    skip = {os.path.realpath(x) for x in exclude}
    found: dict[str, tuple[Path, Path]] = {}

    def add(path: Path, rel: Path):
        found.setdefault(os.path.realpath(path), (path, rel))

    for raw in inputs:
        s = os.fspath(raw)
        p = Path(s)
        if p.is_dir():
            hits, subdirs = 0, False
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and os.path.realpath(os.path.join(root, d)) not in skip)
                subdirs, dirs[:] = subdirs or bool(dirs), dirs if recursive else []
                for f in files:
                    if _is_image_name(f):
                        hits += 1
                        add(Path(root, f), Path(root, f).relative_to(p))
            if not hits:
                report(p, "no images found in this folder" + (" (subfolders are searched only with "
                                                               "--recursive)" if subdirs and not recursive else ""))
        elif p.exists():
            if p.suffix.lower() in EXTENSIONS:
                add(p, Path(p.name))
            else:
                report(p, f"not a supported image type '{p.suffix or '(no extension)'}' "
                          "(expected png, jpg, jpeg, bmp, tif, tiff or webp)")
        elif any(c in s for c in "*?["):
            parts = p.parts
            k = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
            base = Path(*parts[:k]) if k else Path(".")
            hits = [Path(m) for m in Path(base).glob(str(Path(*parts[k:])))
                    if m.is_file() and _is_image_name(m.name)]
            for m in hits:
                add(m, m.relative_to(base))
            if not hits:
                report(p, "no image files match this pattern")
        else:
            report(p, "no such file or folder")

    out, owners = [], {}
    for path, rel in sorted(found.values(), key=lambda t: _natural(t[0])):
        key = str(rel).casefold()
        if key in owners:
            report(path, f"would write the same output as {owners[key]}; rename one or pass them separately")
            continue
        owners[key] = path
        out.append((path, rel))
    return out
