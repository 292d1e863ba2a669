"""Identity distance between two FFHQ-aligned crops of one face: did restoring change who it is?

dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat, CC0, shipped
in face-recognition-models) maps a face chip to a 128-d descriptor; dlib calls two faces
the same person below a distance of 0.6. The crops are already aligned, so the chip is
cut from the FFHQ template's eye and nose points (faces._FFHQ_DLIB5) rather than from
landmarks found again on a restored (or badly degraded) face: input and output are
measured with the same geometry. About 90 ms a descriptor on one CPU core.
"""
from __future__ import annotations

import threading

import numpy as np

from . import faces as facelib

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SAME_PERSON = 0.6
_SIZE = 200
_local = threading.local()       # dlib's networks must not be shared between threads


def _net():
    net = getattr(_local, "net", None)
    if net is None:
        import dlib
        path = facelib.find_predictor("5").parent / MODEL_FILE
        if not path.is_file():
            raise facelib.FaceModelError(f"dlib face recognition model not found: {path}")
        net = _local.net = dlib.face_recognition_model_v1(str(path))
    return net


def descriptor(crop: np.ndarray) -> np.ndarray:
    """128-d descriptor of an FFHQ-aligned BGR crop of any size."""
    import cv2
    import dlib

    img = np.ascontiguousarray(cv2.resize(crop, (_SIZE, _SIZE), interpolation=cv2.INTER_AREA
                                          if crop.shape[0] > _SIZE else cv2.INTER_CUBIC)[:, :, ::-1])
    pts = [dlib.point(int(round(x)), int(round(y))) for x, y in facelib._FFHQ_DLIB5 * _SIZE]
    shape = dlib.full_object_detection(dlib.rectangle(_SIZE // 6, _SIZE // 6, 5 * _SIZE // 6, 5 * _SIZE // 6), pts)
    return np.array(_net().compute_face_descriptor(img, shape))


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Descriptor distance of two aligned crops of one face (0 = same; > 0.6: another person to dlib)."""
    return float(np.linalg.norm(descriptor(a) - descriptor(b)))
