"""Image container headers, read without decoding pixels.

Why: the pixel-count limit (decompression bombs) must be checked before the decoder
allocates anything, truncated files must be caught even when a decoder would return
a half-grey picture, and the EXIF orientation must be found ourselves because
OpenCV's IMREAD_UNCHANGED (the only flag that keeps alpha and 16 bits) ignores it.
Only the five supported formats are parsed; all parsing is bounds-checked and a
malformed optional block (EXIF) never makes a good picture unreadable.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import cv2
import numpy as np

FORMATS = ("png", "jpeg", "bmp", "tiff", "webp")
_OTHERS = [(b"GIF8", "GIF"), (b"8BPS", "PSD"), (b"%PDF", "PDF"), (b"\x76\x2f\x31\x01", "OpenEXR"),
           (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
           (b"#?RADIANCE", "Radiance HDR"), (b"\xff\x0a", "JPEG XL"), (b"qoif", "QOI")]
_SUPPORTED = "use png, jpg, bmp, tif or webp"


@dataclass
class Header:
    fmt: str | None               # one of FORMATS, or None when the bytes are not usable
    width: int = 0                # 0 = unknown until decoded
    height: int = 0
    orientation: int = 1          # EXIF/TIFF orientation tag, 1..8
    grey: bool = False            # PNG grey(+alpha): OpenCV expands grey+alpha to BGRA
    problem: str | None = None    # why the file cannot be used, found without decoding


def sniff(data: bytes) -> tuple[str | None, str | None]:
    """(format, None) for a supported file, else (None, reason) from the magic bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png", None
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg", None
    if data[:2] == b"BM" and len(data) >= 14:
        return "bmp", None
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff", None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", None
    for magic, name in _OTHERS:
        if data.startswith(magic):
            return None, f"unsupported image format ({name}); {_SUPPORTED}"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        name = "AVIF" if brand in (b"avif", b"avis") else "HEIF/HEIC" if brand in (
            b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"heim") else None
        if name:
            return None, f"unsupported image format ({name}); {_SUPPORTED}"
        return None, "not an image (this is a video/MP4-family file)"
    return None, f"not an image (content is not png, jpg, bmp, tif or webp)"


def ifd0(t: bytes, want: Iterable[int]) -> dict[int, list[int]]:
    """Integer tags of the first IFD of a TIFF structure (TIFF files and EXIF blocks)."""
    bo = "<" if t[:2] == b"II" else ">"
    (off,) = struct.unpack(bo + "I", t[4:8])
    (n,) = struct.unpack(bo + "H", t[off:off + 2])
    out: dict[int, list[int]] = {}
    for i in range(min(n, 1000)):
        e = off + 2 + 12 * i
        tag, typ, cnt = struct.unpack(bo + "HHI", t[e:e + 8])
        if tag not in want or typ not in (3, 4) or cnt > 1_000_000:
            continue
        code, size = ("H", 2) if typ == 3 else ("I", 4)
        raw = t[e + 8:e + 8 + cnt * size] if cnt * size <= 4 else \
            t[struct.unpack(bo + "I", t[e + 8:e + 12])[0]:][:cnt * size]
        out[tag] = list(struct.unpack(bo + code * cnt, raw))
    return out


def exif_orientation(blob: bytes) -> int:
    """Orientation (1..8) from an EXIF block, 1 when absent or malformed."""
    blob = blob[6:] if blob.startswith(b"Exif\x00\x00") else blob
    try:
        o = ifd0(blob, (0x112,)).get(0x112, [1])[0]
    except (struct.error, IndexError, ValueError):
        return 1
    return o if 1 <= o <= 8 else 1


def parse_header(data: bytes) -> Header:
    """Format, size, orientation and structural damage of an encoded image."""
    fmt, why = sniff(data)
    h = Header(fmt, problem=why)
    if fmt is None:
        return h
    try:
        {"png": _png, "jpeg": _jpeg, "bmp": _bmp, "tiff": _tiff, "webp": _webp}[fmt](data, h)
    except (struct.error, IndexError, ValueError):
        if h.problem is None and not h.width:
            h.problem = f"truncated or corrupt {fmt.upper()} header"
    return h


def _png(d: bytes, h: Header) -> None:
    pos = 8
    while True:
        if pos + 12 > len(d):
            h.problem = "truncated (PNG data ends before the IEND chunk)"
            return
        n, typ = struct.unpack(">I4s", d[pos:pos + 8])
        body = d[pos + 8:pos + 8 + n]
        if typ == b"IHDR":
            h.width, h.height, _, colour = struct.unpack(">IIBB", body[:10])
            h.grey = colour in (0, 4)
        elif typ == b"eXIf":
            h.orientation = exif_orientation(body)
        elif typ == b"IEND":
            return
        pos += 12 + n


def _jpeg(d: bytes, h: Header) -> None:
    pos = 2
    while pos + 4 <= len(d):
        if d[pos] != 0xFF:
            return                                   # odd structure: let the decoder judge
        marker = d[pos + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 1 if marker == 0xFF else 2
            continue
        (seglen,) = struct.unpack(">H", d[pos + 2:pos + 4])
        seg = d[pos + 4:pos + 2 + seglen]
        if marker == 0xDA:   # scan data follows; 0xFFD9 cannot occur inside it, so it must end the file
            if d.find(b"\xff\xd9", pos + 2 + seglen) < 0:
                h.problem = "truncated (JPEG data ends before the end-of-image marker)"
            return
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(seg) >= 5:
            h.height, h.width = struct.unpack(">HH", seg[1:5])
        elif marker == 0xE1 and seg.startswith(b"Exif\x00\x00") and h.orientation == 1:
            h.orientation = exif_orientation(seg)
        pos += 2 + seglen
    h.problem = "truncated (JPEG data ends before the image data)"


def _bmp(d: bytes, h: Header) -> None:
    (off,) = struct.unpack("<I", d[10:14])
    if struct.unpack("<I", d[14:18])[0] == 12:       # OS/2 core header
        h.width, height, bpp, comp = *struct.unpack("<HHxxH", d[18:26]), 0
    else:
        h.width, height, _, bpp, comp = struct.unpack("<iiHHI", d[18:34])
    h.height = abs(height)
    if comp in (0, 3, 6) and off + (h.width * bpp + 31) // 32 * 4 * h.height > len(d):
        h.problem = "truncated (BMP file is shorter than its pixel data)"


def _tiff(d: bytes, h: Header) -> None:
    if d[2:4] in (b"+\x00", b"\x00+"):
        return                                       # BigTIFF: size checked after decoding
    tags = ifd0(d, (256, 257, 273, 279, 274, 324, 325))
    h.width, h.height = tags.get(256, [0])[0], tags.get(257, [0])[0]
    o = tags.get(274, [1])[0]
    h.orientation = o if 1 <= o <= 8 else 1
    for offs, counts in ((273, 279), (324, 325)):   # strips, tiles
        ends = [o + c for o, c in zip(tags.get(offs, []), tags.get(counts, []))]
        if ends and max(ends) > len(d):
            h.problem = "truncated (TIFF file is shorter than its image data)"


def _webp(d: bytes, h: Header) -> None:
    if struct.unpack("<I", d[4:8])[0] + 8 > len(d):
        h.problem = "truncated (WebP file is shorter than its RIFF size)"
    pos = 12
    while pos + 8 <= len(d):
        tag, n = d[pos:pos + 4], struct.unpack("<I", d[pos + 4:pos + 8])[0]
        body = d[pos + 8:pos + 8 + n]
        if tag == b"VP8X":
            h.width = 1 + int.from_bytes(body[4:7], "little")
            h.height = 1 + int.from_bytes(body[7:10], "little")
        elif tag == b"VP8 " and not h.width and body[3:6] == b"\x9d\x01\x2a":
            w, hh = struct.unpack("<HH", body[6:10])
            h.width, h.height = w & 0x3FFF, hh & 0x3FFF
        elif tag == b"VP8L" and not h.width and body[:1] == b"\x2f":
            bits = struct.unpack("<I", body[1:5])[0]
            h.width, h.height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif tag == b"EXIF":
            h.orientation = exif_orientation(body)
        pos += 8 + n + (n & 1)


def orient(a: np.ndarray, o: int) -> np.ndarray:
    """Turn stored pixels (HxW or HxWxC) upright for orientation o (1..8)."""
    if o >= 5:
        a = a.swapaxes(0, 1)
    flip_rows, flip_cols = {2: (0, 1), 3: (1, 1), 4: (1, 0), 6: (0, 1), 7: (1, 1), 8: (1, 0)}.get(o, (0, 0))
    return np.ascontiguousarray(a[::-1 if flip_rows else 1, ::-1 if flip_cols else 1])


def _riff(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)


@lru_cache(maxsize=None)
def decoder_orients(fmt: str) -> bool:
    """Does OpenCV's IMREAD_UNCHANGED already apply this format's orientation tag?

    OpenCV 5.0 does for TIFF (inside its libtiff reader) and not for JPEG, PNG or WebP,
    and this has differed between releases; so ask the installed OpenCV once, with a
    tiny file tagged 'rotate 180' whose left half is white.
    """
    px = np.zeros((8, 16, 3), np.uint8)
    px[:, :8] = 255
    ex = b"II*\x00" + struct.pack("<IHHHIHHI", 8, 1, 0x112, 3, 1, 3, 0, 0)
    if fmt == "tiff":
        raw = px[..., 0].tobytes()
        tags = [(256, 16), (257, 8), (258, 8), (259, 1), (262, 1), (273, 8), (274, 3), (277, 1),
                (278, 8), (279, len(raw))]
        ifd = struct.pack("<H", len(tags)) + b"".join(
            struct.pack("<HHIHH", t, 3, 1, v, 0) for t, v in tags) + b"\x00" * 4
        data = b"II*\x00" + struct.pack("<I", 8 + len(raw)) + raw + ifd
    elif fmt in ("jpeg", "png", "webp"):
        ok, buf = cv2.imencode("." + {"jpeg": "jpg"}.get(fmt, fmt), px,
                               [cv2.IMWRITE_WEBP_QUALITY, 101] if fmt == "webp" else [])
        b = buf.tobytes()
        if fmt == "jpeg":
            app1 = b"Exif\x00\x00" + ex
            data = b[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + b[2:]
        elif fmt == "png":
            data = b[:33] + struct.pack(">I", len(ex)) + b"eXIf" + ex + \
                struct.pack(">I", zlib.crc32(b"eXIf" + ex)) + b[33:]
        else:
            vp8x = _riff(b"VP8X", b"\x08\x00\x00\x00" + (15).to_bytes(3, "little") + (7).to_bytes(3, "little"))
            body = b"WEBP" + vp8x + b[12:] + _riff(b"EXIF", ex)
            data = b"RIFF" + struct.pack("<I", len(body)) + body
    else:
        return False
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return out is not None and int(out[0, 0].max() if out.ndim == 3 else out[0, 0]) < 128
