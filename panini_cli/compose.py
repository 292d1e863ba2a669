"""Turn restored faces back into a whole picture in the input's own form.

Whole photos: the restored crops are warped back and blended with a feathered
mask onto the (optionally upscaled) original, at the original's bit depth.
Aligned crops: the restored crop itself, at the model's output size or at
`upscale` times the input size. Grey, alpha and 16-bit are given back by
images.from_bgr.
"""
from __future__ import annotations

import cv2

from . import faces as facelib
from . import images

ALPHA_EXTENSIONS = (".png", ".webp", ".tif", ".tiff")


def compose(item, variant: int, aligned: bool, upscale: float | None, in_size: int,
            pasted: list | None = None) -> images.Image:
    """The output picture of one Prepared item for results[variant] of each face.

    `pasted` (guard.judge_item) gives per face the image to paste, or None to leave
    the input's face as it was; by default every face's result is pasted."""
    img = item.image
    if pasted is None:
        pasted = [face.results[variant].image for face in item.faces]
    if aligned:
        canvas = pasted[0]
        if canvas is None:                  # left as it was: the input itself, at the output's size
            canvas = images.to_bgr(img)
            out = item.faces[0].results[variant].image.shape[0]
            if upscale is None and canvas.shape[:2] != (out, out):
                canvas = cv2.resize(canvas, (out, out), interpolation=cv2.INTER_CUBIC)
        if upscale is not None:
            size = (round(img.width * upscale), round(img.height * upscale))
            interp = cv2.INTER_AREA if size[0] < canvas.shape[1] else cv2.INTER_CUBIC
            canvas = cv2.resize(canvas, size, interpolation=interp)
        return images.from_bgr(canvas, like=img)
    scale = upscale or 1.0
    base = images.to_bgr(img)
    canvas = base
    if scale != 1.0:
        canvas = cv2.resize(base, (round(img.width * scale), round(img.height * scale)),
                            interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    for face, picture in zip(item.faces, pasted):
        if picture is not None:
            canvas = facelib.paste_back(base, picture, face.affine, scale, crop_size=in_size, background=canvas)
    return images.from_bgr(canvas, like=img)


def write_picture(target, picture: images.Image, protected) -> list[str]:
    """Write atomically; drop alpha (with a note) when the format cannot hold it."""
    alpha, notes = picture.alpha, []
    if alpha is not None and target.suffix.lower() not in ALPHA_EXTENSIONS:
        alpha, notes = None, [f"alpha channel dropped: {target.suffix} has none (use --ext png)"]
    images.write_image(target, picture.pixels, alpha, protected=protected)
    return notes
