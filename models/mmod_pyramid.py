"""dlib's tiled image pyramid, the MMOD detector's input layer: a reference and a fast op.

Why: the pyramid (each level 5/6 of the one before, all tiled into one canvas) is what
lets one pass of the CNN see faces of every size, and drawing it costs about a third of
the detector's time on the CPU. `tile_pyramid` is the reference: fp32, normalised
values, dlib's corner-aligned bilinear resize of each level from the previous one.
`tile_pyramid_u8` is the fast op: the same levels resized in uint8 (torch's vectorised
channels-last path), written as raw 0-255 values into a bf16 canvas whose empty parts
hold the mean colour, so the normalisation can be folded into the first conv
(MMODNet(raw_input=True)). tests/test_mmod.py compares the two.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pyramid_layout(h: int, w: int, n: int = 6, padding: int = 10, outer: int = 11
                   ) -> tuple[list[tuple[int, int, int, int]], int, int]:
    """Where dlib's tiled pyramid puts each level: ([(x0, y0, x1, y1) inclusive], H, W).

    Levels shrink by (n-1)/n (floored) until fewer than 5 rows. The first column holds
    the image and the levels below it until the rest fits, going back up, right-aligned,
    beside the lower part of that column (as image_pyramid.h lays them out).
    """
    sizes = [(h, w)]
    rate = (n - 1.0) / n
    while True:
        h, w = math.floor(rate * h), math.floor(rate * w)
        if h * w == 0 or h < 5:
            break
        sizes.append((h, w))
    h0, w0 = sizes[0]
    total = sum(s[0] + padding for s in sizes) - 2 * padding
    height, prev_w = 0, 0
    for sh, sw in sizes:
        if sw <= w0 - prev_w - padding and (height - h0) * 2 >= total - h0:
            break
        height += sh + padding
        prev_w = sw
    height -= padding
    rects, y = [], outer
    while y < height + outer and len(rects) < len(sizes):
        sh, sw = sizes[len(rects)]
        rects.append((outer, y, outer + sw - 1, y + sh - 1))
        y += sh + padding
    y -= padding
    while len(rects) < len(sizes):
        sh, sw = sizes[len(rects)]
        x1, y1 = outer + w0 - 1, y - 1
        rect = (x1 - sw + 1, y1 - sh + 1, x1, y1)
        first = rects[0]
        if rect[0] <= first[2] and rect[2] >= first[0] and rect[1] <= first[3] and rect[3] >= first[1]:
            break                                        # would overlap the image itself
        rects.append(rect)
        y -= sh + padding
    return rects, height + 2 * outer, w0 + 2 * outer


def tile_pyramid(images: torch.Tensor, rects, canvas_hw: tuple[int, int], out: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """(B, 3, h, w) normalised images -> (B, 3, H, W) canvases with every level in place.

    Each level is a corner-aligned bilinear resize of the one before, as dlib's
    resize_image does; the rest of the canvas stays 0 (the mean colour). `out`, if given,
    is the zeroed canvas to draw into (e.g. a view of a batch).
    """
    if out is None:
        out = images.new_zeros(images.shape[0], images.shape[1], *canvas_hw)
    level = images
    for i, (x0, y0, x1, y1) in enumerate(rects):
        if i:
            level = F.interpolate(level, size=(y1 - y0 + 1, x1 - x0 + 1), mode="bilinear", align_corners=True)
        out[:, :, y0:y1 + 1, x0:x1 + 1] = level
    return out


def uncovered(rects, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Half-open (y0, y1, x0, x1) bands covering the part of a height x width canvas that no
    tile (inclusive x0, y0, x1, y1; tiles do not overlap) covers."""
    ys = sorted({0, height} | {r[1] for r in rects} | {r[3] + 1 for r in rects})
    out = []
    for ya, yb in zip(ys, ys[1:]):
        spans = sorted((r[0], r[2] + 1) for r in rects if r[1] <= ya and r[3] >= yb - 1)
        x = 0
        for a, b in spans:
            if a > x:
                out.append((ya, yb, x, a))
            x = max(x, b)
        if x < width:
            out.append((ya, yb, x, width))
    return out


def tile_pyramid_u8(images: torch.Tensor, rects, out_nhwc: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """(B, h, w, 3) uint8 images -> every level drawn as raw values into `out_nhwc`
    (B, H, W, 3), any float dtype, every pixel outside the tiles set to `fill` (3,).

    Levels are resized in uint8 with corner alignment, as the reference does in fp32:
    within ~2.5 of 255 of it (each level rounds once). `out_nhwc` may be larger than the
    layout's canvas (a batch padded to its largest image): that margin is filled too.
    """
    level = images.permute(0, 3, 1, 2)                    # channels-last uint8: the fast resize
    for i, (x0, y0, x1, y1) in enumerate(rects):
        if i:
            level = F.interpolate(level, size=(y1 - y0 + 1, x1 - x0 + 1), mode="bilinear", align_corners=True)
        out_nhwc[:, y0:y1 + 1, x0:x1 + 1].copy_(level.permute(0, 2, 3, 1))
    fill = fill.to(out_nhwc.dtype)
    for y0, y1, x0, x1 in uncovered(rects, out_nhwc.shape[1], out_nhwc.shape[2]):
        out_nhwc[:, y0:y1, x0:x1] = fill
    return out_nhwc
