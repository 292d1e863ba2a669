"""panini_cli.tracking.FaceTracker on frames built from real face photos: following a moving
face between whole-frame searches, and a scene cut ending the old tracks and finding the
new face at once."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from panini_cli import faces as F
from panini_cli.images import read_image, to_bgr8
from panini_cli.video.tracking import FaceTracker
from panini_cli.video import Settings, make_tracker

SHARED = Path(os.environ.get("PANINI_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
ALIGNED = SHARED / "data" / "faces_aligned"
pytestmark = [
    pytest.mark.skipif(not ALIGNED.is_dir(), reason=f"shared face photos not found under {ALIGNED}"),
    pytest.mark.skipif(importlib.util.find_spec("dlib") is None
                       or importlib.util.find_spec("face_recognition_models") is None,
                       reason="needs dlib and its models: pip install dlib-bin face-recognition-models"),
]
W, H, SIZE = 480, 320, 170           # canvas, and the pasted photo's side (its face is ~110 px)


@pytest.fixture(scope="module")
def detector():
    d = F.DlibDetector("68")
    d._load()
    return d


def face_photo(name: str) -> np.ndarray:
    img = to_bgr8(read_image(ALIGNED / name))
    return cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def frame_with(photo: np.ndarray, x: int, y: int, grey: int = 90) -> np.ndarray:
    frame = np.full((H, W, 3), grey, np.uint8)
    frame[y:y + SIZE, x:x + SIZE] = photo
    return frame


def centre(face: F.Face) -> np.ndarray:
    return np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])


def test_a_moving_face_is_followed_between_whole_frame_searches(detector):
    """Its landmarks move with it (dlib's are whole pixels; its HOG boxes snap to ~11 px cells
    here, which is why the crops come from the landmarks)."""
    photo = face_photo("gpen_ffhq_00001.png")
    tracker = FaceTracker(detector, "68", detect_every=1000)       # one whole-frame search, at frame 0
    first = tracker.step(0, frame_with(photo, 40, 60))
    assert len(first) == 1
    tid, face0 = first[0]
    for i in range(1, 26):                                          # 7 px right, 2 px down a frame
        found = tracker.step(i, frame_with(photo, 40 + 7 * i, 60 + 2 * i))
        assert [t for t, _ in found] == [tid], f"frame {i}: lost the face"
        err = np.abs(found[0][1].landmarks5 - face0.landmarks5 - [7 * i, 2 * i]).max()
        assert err <= 3, f"frame {i}: landmarks off by {err} px"


@pytest.mark.parametrize("cut_threshold", [20.0, float("inf")])
def test_a_scene_cut_ends_the_tracks_and_finds_the_new_face_at_once(detector, cut_threshold):
    """Without the cut test (threshold inf) the new face would wait for the next search."""
    a, b = face_photo("gpen_ffhq_00001.png"), face_photo("gpen_ffhq_00004.png")
    tracker = FaceTracker(detector, "68", detect_every=1000, cut_threshold=cut_threshold)
    ids = set()
    for i in range(5):
        found = tracker.step(i, frame_with(a, 30, 70, grey=60))
        assert len(found) == 1
        ids.add(found[0][0])
    after = tracker.step(5, frame_with(b, W - SIZE - 30, 40, grey=200))
    if cut_threshold == float("inf"):
        assert after == []
        return
    assert len(after) == 1
    tid, face = after[0]
    assert tid not in ids
    assert centre(face)[0] > W / 2                                 # the new face, on the right
    assert [t.id for t in tracker.tracks] == [tid]


def test_the_thumbnail_that_tells_a_cut_joins_the_resumable_state(detector):
    photo = face_photo("gpen_ffhq_00001.png")
    one = FaceTracker(detector, "68", detect_every=1000)
    one.step(0, frame_with(photo, 40, 60, grey=60))
    other = FaceTracker(detector, "68", detect_every=1000)
    other.load(one.state())
    cut = frame_with(face_photo("gpen_ffhq_00004.png"), 250, 40, grey=200)
    assert [t for t, _ in one.step(1, cut)] == [t for t, _ in other.step(1, cut)] == [1]


def test_whole_frame_search_defaults_to_once_a_second(detector):
    assert make_tracker(Settings(), detector, 25.0).detect_every == 25
    assert make_tracker(Settings(), detector, 59.94).detect_every == 60
    assert make_tracker(Settings(), detector, 0.5).detect_every == 1
    assert make_tracker(Settings(detect_every=3), detector, 25.0).detect_every == 3
