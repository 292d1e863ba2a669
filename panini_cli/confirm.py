"""The default `cnn`'s second look at each find in a larger photo.

Why: the MMOD weights fine-tuned on degraded faces find tiny old-photo faces that dlib's
own weights miss, but alone they also call hands, arms, ornaments and the ears, cheeks
and foreheads of large faces faces. So each of their finds is scored again by dlib's
weights, trained on real photos, on a crop around it (`support`), and a find that sits
on the head of a much larger, higher-scoring find is dropped (`off_heads`). detectors.CnnDetector
applies both when it has `confirm_weights`.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# The fine-tuned weights' finds from a score of CNN_CANDIDATE_CUT are each scored again by
# dlib's weights on a crop around them (CONFIRM_CONTEXT x the box, the box at CONFIRM_BOX
# px, the net's window; no NMS: the best score of any position whose box overlaps the
# find with IoU >= 0.4, at least CONFIRM_FLOOR). A face is kept when the two scores add
# up to CNN_CONFIRM_CUT and it is not on a larger face's head (HEAD_RATIO). Chosen with
# scripts/validate_confirm.py --no-photos: on validation faces in backgrounds (150 per
# cell) old photo 30 / 40 / 50 px: 94 / 99 / 99% found (dlib's weights alone 23 / 70 /
# 88%), JPEG q15 30 px 97%, no face-free piece above -0.24; of 392 hard negatives mined
# off the faces of the shared aligned photos and clips (ears, cheeks, foreheads, hands,
# hair), one is kept (a hand holding a microphone, 0.84); the next scores 0.38, a margin
# of 0.22 (the same find's score moves by ~0.1 between noise draws). The earlier cut, 0.9
# without the head rule, found 81 / 98 / 99% and kept one (a cheek, 0.91).
CNN_CANDIDATE_CUT = 0.0
CNN_CONFIRM_CUT = 0.6
CONFIRM_CONTEXT, CONFIRM_FLOOR = 3.0, -2.5
CONFIRM_BOX = 80.0                      # the find's side in the confirm crop: the net's window
# A kept find whose centre lies within HEAD_REACH x a kept find's side of that find's
# centre (in x and in y), that find being at least HEAD_RATIO x its side and scoring
# higher, is part of that face's head (an ear, a cheek, the forehead), not a face. Most
# mined hard negatives are such parts, 2-14x smaller than the face, centres 0.5-0.75 of
# its side from its centre; at the cut the rule drops 4 of the 5 kept and none of their
# images' faces (looked at). The score condition came later: without it a false face on
# a building, 2x a real face below it, dropped that face in the benchmark's Solvay photo.
HEAD_RATIO, HEAD_REACH = 2.0, 0.8


def side(box):
    """A box's side (x0, y0, x1, y1 inclusive, or (n, 4) of them), the mean of width and height."""
    b = np.asarray(box, np.float64)
    return (b[..., 2] - b[..., 0] + b[..., 3] - b[..., 1]) / 2 + 1


def crop_around(rgb: np.ndarray, box, f: float, side_px: int) -> np.ndarray:
    """A side_px x side_px crop centred on the box, the image scaled by f (mirrored beyond its edges)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    r = side_px / f / 2                                  # half the crop's side in image px
    x0, y0 = int(math.floor(cx - r + 0.5)), int(math.floor(cy - r + 0.5))
    n = max(1, int(round(2 * r)))
    hgt, wid = rgb.shape[:2]
    m = max(0, -x0, -y0, x0 + n - wid, y0 + n - hgt)
    src = cv2.copyMakeBorder(rgb, m, m, m, m, cv2.BORDER_REFLECT_101) if m else rgb   # (wider than the image: repeated)
    piece = src[y0 + m:y0 + m + n, x0 + m:x0 + m + n]
    return cv2.resize(piece, (side_px, side_px), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def support(net, images_rgb: list[np.ndarray], dets: list[np.ndarray]) -> list[np.ndarray]:
    """`net`'s (an MMODDetector) score near each detection, all detections of all images
    in one batch of equal crops."""
    win = CONFIRM_BOX
    n = int(round(CONFIRM_CONTEXT * win))
    crops = [crop_around(rgb, box, win / side(box), n) for rgb, d in zip(images_rgb, dets) for box in d[:, :4]]
    if not crops:
        return [np.zeros(0) for _ in dets]
    from panini_models.mmod import box_iou

    h, c = (win - 1) / 2, (n - 1) / 2
    target = np.array([c - h, c - h, c + h, c + h])
    best = np.array([cand[box_iou(cand[:, :4], target) >= 0.4, 4].max(initial=CONFIRM_FLOOR)
                     for cand in net(crops, CONFIRM_FLOOR, nms=False)])
    return np.split(best, np.cumsum([len(d) for d in dets])[:-1])


def kept(dets: np.ndarray, cut: float, head_rule: bool = True) -> np.ndarray:
    """(n,) bool: the detections (n, 5; combined scores) that reach `cut` and, with
    `head_rule`, are not on a larger one's head among those (off_heads)."""
    keep = dets[:, 4] >= cut
    if head_rule:
        keep[keep] = off_heads(dets[keep])
    return keep


def off_heads(dets: np.ndarray) -> np.ndarray:
    """(n,) bool: which detections (n, 5) are not on the head of a much larger one that
    scores higher (HEAD_RATIO)."""
    keep = np.ones(len(dets), bool)
    if len(dets) < 2:
        return keep
    sides = side(dets[:, :4])
    centres = (dets[:, :2] + dets[:, 2:4]) / 2
    for i in np.argsort(-sides):                         # largest first: a dropped part drops nothing
        if not keep[i]:
            continue
        near = np.abs(centres - centres[i]).max(1) <= HEAD_REACH * sides[i]
        keep &= ~(near & (sides * HEAD_RATIO <= sides[i]) & (dets[:, 4] < dets[i, 4]))
    return keep
