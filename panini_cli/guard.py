"""Do no harm: decide per face whether the restored face replaces the input's.

Why: a restorer can hand back a face worse than it got: blurrier than a sharp input
it had to shrink to its input size, or with features it invented. Every command that
pastes faces asks `judge` first; a face the check turns down is left as it was.

The check compares the restored face with the input face at the input's own
resolution (the pixels the photo really holds for that face):
- `fidelity`: PSNR (dB) between the two after a light blur (sigma 1 px at that
  resolution). A restoration may remove noise and add detail, both above that
  band; it must keep what the input shows below it. A model that blurs or smudges
  a face the photo shows clearly scores low;
- `sharpness`: log2 of the restored face's high-frequency energy over the input's,
  at that resolution: below 0 the output holds less detail than the input had;
- `room`: the model's output size over the face's size on the output canvas: under 1
  the model's output is enlarged when pasted, so it cannot be sharper than its size;
- `ood`: the vDR's distance from the model's training vDRs over its threshold
  (model files with `vdr_stats`), > 1 for degradations training rarely saw.
A restored face also gets `identity`: dlib's descriptor distance from the input face
(identity.py; a face left as it was is the input itself).
A model file may carry `gate` metadata (scripts/calibrate_gate.py fits it on faces
and degradations it never trained on): a linear prediction, from these signals, of the
PSNR gain over the face left as it was; a face is restored when it clears the gate's
margin. Without one (e.g. imported official models) DEFAULT_RULE decides: a heuristic,
since what a model does to faces cannot be known without measuring it (on the bundled
model's calibration faces it let 13 of 703 through, which lost 3.6 dB on average).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from . import faces as facelib

META_KEY = "gate"
FEATURES = ("fidelity", "sharpness", "log2_room", "ood")     # what a calibrated gate weighs
# Without a calibrated gate: restore when the output stays faithful below the input's own
# detail band and is not blurrier than the input.
DEFAULT_RULE = {"fidelity_min": 30.0, "sharpness_min": -0.5}


@dataclass
class GuardOptions:
    force: bool = False          # restore every face whatever the check says
    strength: float = 1.0        # 0 = the input face, 1 = the restored face
    match_colour: bool = True    # move the restored face's colour to the input face's
    identity: bool = True        # measure each restored face's identity distance (identity.py)


@dataclass
class Verdict:
    restored: bool
    reason: str
    signals: dict = field(default_factory=dict)
    score: float | None = None

    def record(self) -> dict:
        out = {"restored": self.restored, "reason": self.reason,
               **{k: (None if v is None else round(float(v), 4)) for k, v in self.signals.items()}}
        if self.score is not None:
            out["score"] = round(float(self.score), 4)
        return out


def rescale_affine(affine: np.ndarray, k: float) -> np.ndarray:
    """The image->crop matrix for a crop k times the size (pixel centres stay centres)."""
    s = np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5]])
    return facelib._compose(s, np.asarray(affine, np.float64))


def native_size(affine: np.ndarray, in_size: int) -> float:
    """Photo pixels across the face's FFHQ square."""
    return in_size / math.sqrt(abs(np.linalg.det(np.asarray(affine, np.float64)[:, :2])))


def _resize(img: np.ndarray, n: int) -> np.ndarray:
    if img.shape[0] == n:
        return img
    return cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA if img.shape[0] > n else cv2.INTER_CUBIC)


def _face_weight(n: int) -> np.ndarray:
    """Where the face is in an FFHQ crop: its central part, softly (not hair or background)."""
    return facelib.soft_mask(n, feather=0.12, margin=0.18)


def _wpsnr(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    d = (a.astype(np.float32) - b.astype(np.float32)) ** 2
    mse = float((d.mean(-1) * w).sum() / max(w.sum(), 1e-6))
    return 99.0 if mse < 1e-10 else 10 * math.log10(255.0 ** 2 / mse)


def _hf_energy(img: np.ndarray, w: np.ndarray) -> float:
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    lap = cv2.Laplacian(g, cv2.CV_32F, ksize=3)
    return float((lap * lap * w).sum() / max(w.sum(), 1e-6))


def signals(restored: np.ndarray, native: np.ndarray, out_px: float, ood: float | None) -> dict:
    """The check's measurements for one face (see the module docstring).

    restored: the model's output crop (out_size); native: the input face's FFHQ crop at the
    photo's own resolution; out_px: the face square's side on the output canvas."""
    n = native.shape[0]
    r = _resize(restored, n)
    w = _face_weight(n)
    blur = lambda x: cv2.GaussianBlur(x, (0, 0), 1.0)          # noqa: E731
    eps = 1.0
    return {"fidelity": _wpsnr(blur(r), blur(native), w),
            "sharpness": math.log2((_hf_energy(r, w) + eps) / (_hf_energy(native, w) + eps)),
            "room": restored.shape[0] / max(out_px, 1.0),
            "ood": ood}


def native_crop(image_bgr: np.ndarray, affine: np.ndarray, in_size: int, max_size: int) -> np.ndarray:
    """The face's FFHQ crop at the photo's own resolution (at most max_size, at least 16 px)."""
    n = int(np.clip(round(native_size(affine, in_size)), 16, max_size))
    return facelib.cut_crop(image_bgr, rescale_affine(affine, n / in_size), n)


def features(sig: dict) -> list[float]:
    """The signals as a calibrated gate weighs them (FEATURES); no vDR statistics count as typical."""
    return [float(sig["fidelity"]), float(sig["sharpness"]), math.log2(max(sig["room"], 1e-3)),
            1.0 if sig.get("ood") is None else float(sig["ood"])]


def decide(sig: dict, gate: dict | None, force: bool) -> Verdict:
    """Restore or leave, with the reason in words.

    A calibrated gate predicts the PSNR gain (dB) of the restored face over the face left
    as it was; the face is restored when the prediction clears the gate's margin."""
    if gate is not None:
        x = np.clip(features(sig), gate["lo"], gate["hi"])       # no extrapolation past calibration
        gain = float(np.dot(gate["weights"], x) + gate["bias"])
        ok = gain > gate["margin"]
        reason = (f"expected gain {gain:+.1f} dB" if ok else
                  f"this model is not expected to improve this face ({gain:+.1f} dB expected; calibrated on "
                  f"{gate['faces']} held-out faces, of which the model improved {gate['improved']})")
        verdict = Verdict(ok, reason, sig, gain)
    else:
        if sig["fidelity"] < DEFAULT_RULE["fidelity_min"]:
            verdict = Verdict(False, f"the model changes what the photo shows clearly "
                                     f"(fidelity {sig['fidelity']:.1f} dB < {DEFAULT_RULE['fidelity_min']:g})", sig)
        elif sig["sharpness"] < DEFAULT_RULE["sharpness_min"]:
            verdict = Verdict(False, "sharper than this model can restore", sig)
        else:
            verdict = Verdict(True, "passes the check", sig)
    if force and not verdict.restored:
        verdict = Verdict(True, f"forced (the check said: {verdict.reason})", sig, verdict.score)
    return verdict


def match_colour(restored: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Shift the restored face's mean colour (Lab, face area) to the reference's.

    Only the mean moves: matching the spread too would put the input's noise back."""
    n = restored.shape[0]
    ref = _resize(reference, n)
    w = _face_weight(n)[..., None]
    a = cv2.cvtColor(restored, cv2.COLOR_BGR2LAB).astype(np.float32)
    b = cv2.cvtColor(ref, cv2.COLOR_BGR2LAB).astype(np.float32)
    shift = ((b - a) * w).sum((0, 1)) / max(w.sum(), 1e-6)
    return cv2.cvtColor(np.clip(a + shift + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)


def blend(restored: np.ndarray, reference: np.ndarray, strength: float) -> np.ndarray:
    """strength * restored + (1 - strength) * the input face (at the restored size)."""
    if strength >= 1:
        return restored
    ref = _resize(reference, restored.shape[0])
    return cv2.addWeighted(restored, float(strength), ref, 1 - float(strength), 0.0)


def check(image_bgr: np.ndarray, affine: np.ndarray, restored: np.ndarray, in_size: int, scale: float,
          gate: dict | None = None, ood: float | None = None, force: bool = False) -> tuple[np.ndarray, Verdict]:
    """(the input face at the photo's own resolution, the verdict) for one restored face shown
    at `scale` x its size in the photo. ood: the vDR's distance over the model's threshold."""
    native = native_crop(image_bgr, affine, in_size, max_size=2 * restored.shape[0])
    return native, decide(signals(restored, native, native_size(affine, in_size) * scale, ood), gate, force)


def judge(image_bgr: np.ndarray, affine: np.ndarray, restored: np.ndarray, in_size: int, scale: float,
          options: GuardOptions, gate: dict | None = None, ood: float | None = None
          ) -> tuple[np.ndarray | None, Verdict]:
    """(the face to paste, or None to leave the input's; the verdict) for one face."""
    native, verdict = check(image_bgr, affine, restored, in_size, scale, gate, ood, options.force)
    if not verdict.restored:
        return None, verdict
    out = finish(restored, native, options)
    if options.identity:
        from .identity import distance
        try:
            verdict.signals["identity"] = distance(native, out)
        except facelib.FaceModelError:      # no recognition model installed: the face is still restored
            verdict.signals["identity"] = None
    return out, verdict


def finish(restored: np.ndarray, native: np.ndarray, options: GuardOptions) -> np.ndarray:
    """The face to paste: colour matched to the input face, blended by --strength."""
    out = match_colour(restored, native) if options.match_colour else restored
    return blend(out, native, options.strength)


class TrackGuard:
    """The check for video: decided on the first frame of each face track and kept for the
    whole track, so a face never flickers between restored and left as it was. (A track
    continues across chunks in one process; a chunk restored by another worker process
    decides again on its first frame of that face.)"""

    def __init__(self, in_size: int, options: GuardOptions, gate: dict | None = None,
                 ood_threshold: float | None = None):
        self.in_size, self.options, self.gate, self.ood_threshold = in_size, options, gate, ood_threshold
        self.decided: dict[int, Verdict] = {}

    def __call__(self, frame: np.ndarray, face) -> np.ndarray | None:
        """The face to paste into `frame`, or None to leave the frame's own face."""
        res = face.results[0]
        native, verdict = None, self.decided.get(face.track) if face.track is not None else None
        if verdict is None:
            native, verdict = check(frame, face.affine, res.image, self.in_size, 1.0, self.gate,
                                    relative_ood(res.ood, self.ood_threshold), self.options.force)
            if face.track is not None:
                self.decided[face.track] = verdict
        if not verdict.restored:
            return None
        if native is None:
            native = native_crop(frame, face.affine, self.in_size, max_size=2 * res.image.shape[0])
        return finish(res.image, native, self.options)


def relative_ood(distance: float | None, threshold: float | None) -> float | None:
    """A vDR distance over the model's threshold (vdr_stats): > 1 is unlike training."""
    return None if distance is None or not threshold else distance / threshold


def judge_item(item, variant: int, aligned: bool, upscale: float | None, in_size: int, options: GuardOptions,
               gate: dict | None = None, ood_threshold: float | None = None
               ) -> tuple[list[np.ndarray | None], list[Verdict]]:
    """judge() for every face of a prepared item (pipeline.Prepared) and one model variant."""
    from . import images

    bgr = images.to_bgr8(item.image) if item.bgr8 is None else item.bgr8
    pasted, verdicts = [], []
    for face in item.faces:
        res = face.results[variant]
        ood = relative_ood(res.ood, ood_threshold)
        # the scale the face is shown at: --upscale, else 1 for photos and the model's size for crops
        scale = upscale or (res.image.shape[0] / native_size(face.affine, in_size) if aligned else 1.0)
        img, verdict = judge(bgr, face.affine, res.image, in_size, scale, options, gate, ood)
        pasted.append(img)
        verdicts.append(verdict)
    return pasted, verdicts
