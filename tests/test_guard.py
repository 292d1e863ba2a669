"""The do-no-harm check (panini_cli/guard.py): signals, decisions, user controls, and the CLI
leaving faces as they were with the bundled model, across variants and commands."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from panini_cli import guard
from panini_cli.app import app

from conftest import DATA, REPO, need, write_small_model

runner = CliRunner()


def face_like(n=128, seed=0):
    """A smooth, detailed test pattern (not a face; the signals do not care)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), (n, n), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 40, (n, n, 3)), (0, 0), 1.2)     # detail below the pixel scale
    return np.clip(base + fine, 0, 255).astype(np.uint8)


def test_signals_tell_a_blurred_output_from_a_faithful_one():
    native = face_like(100)
    faithful = cv2.resize(native, (128, 128), interpolation=cv2.INTER_CUBIC)
    blurred = cv2.GaussianBlur(faithful, (0, 0), 3)
    good = guard.signals(faithful, native, out_px=100, ood=None)
    bad = guard.signals(blurred, native, out_px=100, ood=None)
    assert good["sharpness"] > -0.3 and good["fidelity"] > 35
    assert bad["sharpness"] < -1.5 and bad["fidelity"] < good["fidelity"] - 5
    assert good["room"] == pytest.approx(1.28)


def test_default_rule_leaves_a_blurrier_face_and_force_overrides():
    native = face_like(100)
    blurred = cv2.GaussianBlur(cv2.resize(native, (128, 128)), (0, 0), 3)
    v = guard.decide(guard.signals(blurred, native, 100, None), None, force=False)
    assert not v.restored and v.reason
    forced = guard.decide(guard.signals(blurred, native, 100, None), None, force=True)
    assert forced.restored and forced.reason.startswith("forced")


def test_calibrated_gate_predicts_gain_and_never_extrapolates():
    gate = {"features": list(guard.FEATURES), "weights": [0.0, 0.0, 2.0, 0.0], "bias": 0.0, "margin": 0.5,
            "lo": [0, -9, -2, 0], "hi": [99, 9, 0.0, 9], "faces": 10, "improved": 3}
    sig = {"fidelity": 30.0, "sharpness": 0.0, "room": 0.25, "ood": None}      # log2 room = -2 -> -4 dB
    v = guard.decide(sig, gate, force=False)
    assert not v.restored and v.score == pytest.approx(-4.0) and "-4.0 dB" in v.reason
    # room 8 (log2 = 3) lies past what calibration saw (hi = 0): clipped, so no invented gain
    assert not guard.decide({**sig, "room": 8.0}, gate, force=False).restored
    gate["bias"] = 1.0
    assert guard.decide({**sig, "room": 1.0}, gate, force=False).restored          # 0 + 1 > 0.5


def test_strength_and_colour_match():
    native = face_like(64)
    restored = np.clip(cv2.resize(native, (128, 128)).astype(int) + [30, -20, 10], 0, 255).astype(np.uint8)
    assert np.array_equal(guard.blend(restored, native, 1.0), restored)
    zero = guard.blend(restored, native, 0.0)
    assert np.abs(zero.astype(int) - cv2.resize(native, (128, 128), interpolation=cv2.INTER_CUBIC)).max() <= 1
    matched = guard.match_colour(restored, native)
    before = np.abs(restored.reshape(-1, 3).mean(0) - native.reshape(-1, 3).mean(0)).max()
    after = np.abs(matched.reshape(-1, 3).mean(0) - native.reshape(-1, 3).mean(0)).max()
    assert before > 15 and after < 4


def _photo_dir(tmp_path, names=("facerec_obama_480p.jpg",)):
    src = tmp_path / "in"
    src.mkdir()
    for n in names:
        shutil.copy(need(DATA / "whole_photos" / n), src / n)
    return src


def test_bundled_model_leaves_real_faces_as_they_were_and_says_why(tmp_path):
    """With the shipped default model (calibrated: it improved none of its held-out faces) every
    face is left; the photo comes back byte for byte; --force pastes the model's faces."""
    pytest.importorskip("dlib", reason="dlib (dlib-bin) is not installed")
    src = _photo_dir(tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(app, ["restore", str(src), str(out)])
    assert res.exit_code == 0, res.output
    assert "left as they were" in res.output
    rec = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["faces"] == 1 and rec["faces_kept"] == 1
    check = rec["checks"][0]
    assert check["restored"] is False and "not expected to improve" in check["reason"]
    assert {"fidelity", "sharpness", "room", "ood", "score"} <= set(check)
    name = "facerec_obama_480p.jpg"
    assert (out / "restored_imgs" / name).read_bytes() == (src / name).read_bytes()
    forced = tmp_path / "forced"
    assert runner.invoke(app, ["restore", str(src), str(forced), "--force", "-q"]).exit_code == 0
    a, b = cv2.imread(str(src / name)), cv2.imread(str(forced / "restored_imgs" / name))
    assert np.abs(a.astype(int) - b).max() > 40                       # the model's face is in
    rec = json.loads((forced / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["checks"][0]["restored"] and rec["checks"][0]["reason"].startswith("forced")


def test_strength_zero_keeps_the_face(tmp_path):
    pytest.importorskip("dlib", reason="dlib (dlib-bin) is not installed")
    src = _photo_dir(tmp_path)
    full, none = tmp_path / "full", tmp_path / "none"
    for out, s in ((full, "1"), (none, "0")):
        assert runner.invoke(app, ["restore", str(src), str(out), "--force", "--strength", s, "-q",
                                   "--ext", "png"]).exit_code == 0
    orig = cv2.imread(str(src / "facerec_obama_480p.jpg")).astype(int)
    d_full = np.abs(cv2.imread(str(full / "restored_imgs" / "facerec_obama_480p.png")) - orig).mean()
    d_none = np.abs(cv2.imread(str(none / "restored_imgs" / "facerec_obama_480p.png")) - orig).mean()
    assert d_none < 0.3 * d_full
    bad = runner.invoke(app, ["restore", str(src), str(tmp_path / "x"), "--strength", "1.5"])
    assert bad.exit_code != 0 and "strength" in bad.output


def test_stems_that_collide_keep_their_own_outputs(model_file, tmp_path):
    """a.jpg and a.png with --ext png: two outputs, and a rerun finds both finished."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for ext in ("jpg", "png"):
        cv2.imwrite(str(src / f"a.{ext}"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = tmp_path / "out"
    args = ["restore", "-m", str(model_file), "--aligned", "--ext", "png", "--save", "faces", "-q", str(src), str(out)]
    assert runner.invoke(app, args).exit_code == 0
    assert sorted(p.name for p in (out / "restored_imgs").iterdir()) == ["a_jpg.png", "a_png.png"]
    assert sorted(p.name for p in (out / "restored_faces").iterdir()) == ["a_jpg_00.png", "a_png_00.png"]
    res = runner.invoke(app, [*args[:-2], "--json", str(src), str(out)])
    assert json.loads(res.stdout.strip().splitlines()[-1])["skipped"] == 2


VARIANTS = {
    "small": None,
    "sr": dict(variant="sr"),
    "catconv": dict(variant="catconv"),
}


def _variant_model(tmp_path, name):
    import torch
    from panini_models.checkpoints import save_weights
    from panini_models.panini import PRESETS, PaniniConfig, PaniniNet

    if VARIANTS[name] is None:
        return write_small_model(tmp_path / "small.safetensors")
    cfg = PaniniConfig(**{**json.loads(PRESETS["small"].to_json()), **VARIANTS[name]})
    torch.manual_seed(0)
    model = PaniniNet(cfg)
    path = tmp_path / f"{name}.safetensors"
    save_weights(path, model.state_dict(), "panini", json.loads(cfg.to_json()))
    return path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_runs_through_every_command(variant, tmp_path):
    """restore (aligned and whole photo), inspect, edit (not catconv: no masks) and video, per
    variant: the SR model's learned-constant vDR once stopped restore at its first face."""
    pytest.importorskip("dlib", reason="dlib (dlib-bin) is not installed")
    model = _variant_model(tmp_path, variant)
    crops = tmp_path / "crops"
    crops.mkdir()
    cv2.imwrite(str(crops / "f.png"), face_like(96))
    res = runner.invoke(app, ["restore", "-m", str(model), "--aligned", "--force", "-q", str(crops), str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    src = _photo_dir(tmp_path)
    res = runner.invoke(app, ["restore", "-m", str(model), "-q", str(src), str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["inspect", "-m", str(model), "--theta", "--aligned", str(crops / "f.png")])
    if variant == "catconv":                         # the ablation has no masks: a clear one-line refusal
        assert res.exit_code == 1 and "no DAFI masks" in res.output
    else:
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["edit", "-m", str(model), "--aligned", "--force", "--mask-bias", "0.1",
                                  "-o", str(tmp_path / "e"), "-q", str(crops / "f.png")])
        assert res.exit_code == 0, res.output
    clip = need(DATA / "video" / "keep_real_3.mp4")
    res = runner.invoke(app, ["video", str(clip), "-o", str(tmp_path / "v.mp4"), "-m", str(model),
                              "--duration", "0.3", "-q", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["frames"] >= 5 and summary["faces"] >= 5


def test_identity_distance_tells_people_apart_and_evaluate_reports_it(tmp_path):
    pytest.importorskip("dlib", reason="dlib (dlib-bin) is not installed")
    from panini_cli import identity

    a = cv2.imread(str(need(DATA / "faces_aligned" / "gpen_ffhq_00001.png")))
    b = cv2.imread(str(need(DATA / "faces_aligned" / "gpen_ffhq_00002.png")))
    a, b = (cv2.resize(x, (256, 256), interpolation=cv2.INTER_AREA) for x in (a, b))
    assert identity.distance(a, a) == 0
    assert identity.distance(a, cv2.GaussianBlur(a, (0, 0), 1.5)) < identity.SAME_PERSON
    assert identity.distance(a, b) > identity.SAME_PERSON
    (tmp_path / "r").mkdir()
    (tmp_path / "g").mkdir()
    for name, restored, gt in (("same", a, a), ("other", b, a)):
        cv2.imwrite(str(tmp_path / "r" / f"{name}.png"), restored)
        cv2.imwrite(str(tmp_path / "g" / f"{name}.png"), gt)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "r"), str(tmp_path / "g"), "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "e.json").read_text())
    ids = {r["name"]: r["identity"] for r in doc["images"]}
    assert ids["same.png"] == 0 and ids["other.png"] > identity.SAME_PERSON
    assert doc["mean"]["same_person"] == 0.5


def test_video_guard_decides_once_per_track():
    """A track keeps its first decision, so a face never flickers between restored and left."""
    from panini_cli.pipeline import FaceCrop
    from panini_models.restorer import FaceResult

    frame = cv2.resize(face_like(128), (256, 256))
    affine = np.array([[0.5, 0, 0], [0, 0.5, 0]])                      # the whole frame, at 128 px
    faithful = cv2.resize(frame, (128, 128), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(faithful, (0, 0), 4)

    def face(img, track):
        f = FaceCrop(faithful, affine, (0, 0, 256, 256), track=track)
        f.results.append(FaceResult(img, None, None))
        return f

    tg = guard.TrackGuard(128, guard.GuardOptions())
    assert tg(frame, face(blurred, track=1)) is None                    # first frame of track 1: left
    assert tg(frame, face(faithful, track=1)) is None                   # ... and stays left
    assert tg(frame, face(faithful, track=2)) is not None               # a new track decides afresh
    assert tg(frame, face(blurred, track=2)) is not None                # ... and stays restored
    assert tg(frame, face(blurred, track=None)) is None                 # no track: decided per frame


def test_video_with_the_bundled_model_leaves_faces_and_says_so(tmp_path):
    pytest.importorskip("dlib", reason="dlib (dlib-bin) is not installed")
    clip = need(DATA / "video" / "keep_real_3.mp4")
    res = runner.invoke(app, ["video", str(clip), "-o", str(tmp_path / "v.mp4"), "--duration", "0.5", "--json", "-q"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout.strip().splitlines()[-1])
    assert s["faces"] >= 8 and s["faces_kept"] == s["faces"]
