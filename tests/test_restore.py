"""`panini restore` end to end on small models the tests make: inputs, outputs, failures, resume."""
import json
import shutil

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from panini_cli.app import app

from conftest import DATA, need

runner = CliRunner()


def run(model_file, *args):
    res = runner.invoke(app, ["restore", "-m", str(model_file), "-q", *map(str, args)])
    return res


def records(out_dir):
    return [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]


def face(size=96, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    return img


def test_aligned_folder_with_bad_files(model_file, tmp_path):
    src = tmp_path / "in dir ü"
    (src / "sub").mkdir(parents=True)
    cv2.imwrite(str(src / "a face.png"), face())
    cv2.imwrite(str(src / "sub" / "b.jpg"), face(seed=1))
    (src / "zero.png").write_bytes(b"")
    (src / "trunc.jpg").write_bytes(cv2.imencode(".jpg", face())[1].tobytes()[:200])
    (src / "notes.txt").write_text("not an image")               # ignored inside a folder
    out = tmp_path / "out"
    res = run(model_file, "--aligned", "--recursive", "--save", "faces,crops,cmp", src, out)
    assert res.exit_code == 1, res.output                           # something failed
    recs = {r["path"].split("/")[-1]: r for r in records(out)}
    assert recs["a face.png"]["status"] == "done" and recs["b.jpg"]["status"] == "done"
    assert recs["zero.png"]["status"] == "failed" and recs["trunc.jpg"]["status"] == "failed"
    assert "notes.txt" not in recs
    restored = cv2.imread(str(out / "restored_imgs" / "a face.png"))
    assert restored.shape == (128, 128, 3)                          # aligned: the model's output size
    assert (out / "restored_imgs" / "sub" / "b.jpg").exists()       # tree kept, stem and format kept
    for kind, folder in [("faces", "restored_faces"), ("crops", "cropped_faces"), ("cmp", "cmp")]:
        assert (out / folder / "a face_00.png").exists(), kind
    assert cv2.imread(str(out / "cmp" / "a face_00.png")).shape == (128, 256, 3)
    assert all("\n" not in r.get("error", "") for r in recs.values())
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp"))


def test_rerun_skips_finished_files_and_redoes_missing(model_file, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"{i}.png"), face(seed=i))
    out = tmp_path / "out"
    assert run(model_file, "--aligned", src, out).exit_code == 0
    first = (out / "restored_imgs" / "1.png").read_bytes()
    (out / "restored_imgs" / "2.png").unlink()                     # as if killed before writing it
    res = run(model_file, "--aligned", "--json", src, out)
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["done"] == 1 and summary["skipped"] == 2 and summary["failed"] == 0
    assert (out / "restored_imgs" / "2.png").exists()
    assert (out / "restored_imgs" / "1.png").read_bytes() == first


def test_alpha_grey_and_16bit_are_carried_through(model_file, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    bgra = np.dstack([face(), np.linspace(0, 255, 96 * 96).reshape(96, 96).astype(np.uint8)])
    cv2.imwrite(str(src / "alpha.png"), bgra)
    cv2.imwrite(str(src / "grey.png"), cv2.cvtColor(face(seed=2), cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(src / "deep.png"), face(seed=3).astype(np.uint16) * 257)
    out = tmp_path / "out"
    assert run(model_file, "--aligned", "--upscale", "1", src, out).exit_code == 0
    a = cv2.imread(str(out / "restored_imgs" / "alpha.png"), cv2.IMREAD_UNCHANGED)
    assert a.shape == (96, 96, 4) and np.abs(a[..., 3].astype(int) - bgra[..., 3]).max() <= 1
    g = cv2.imread(str(out / "restored_imgs" / "grey.png"), cv2.IMREAD_UNCHANGED)
    assert g.ndim == 2
    d = cv2.imread(str(out / "restored_imgs" / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert d.dtype == np.uint16 and d.shape == (96, 96, 3)


def test_input_is_never_overwritten(model_file, tmp_path):
    src = tmp_path / "x.png"
    cv2.imwrite(str(src), face())
    before = src.read_bytes()
    (tmp_path / "restored_imgs").mkdir()
    (tmp_path / "restored_imgs" / "x.png").symlink_to(src)          # output path resolves to the input
    res = run(model_file, "--aligned", "--overwrite", src, tmp_path)
    assert res.exit_code == 1
    assert src.read_bytes() == before


def test_unwritable_output_is_refused_before_work(model_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run(model_file, "--aligned", blocker, blocker / "out")
    assert res.exit_code == 1 and "not writable" in res.output


def test_missing_default_model_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["restore", "-m", str(tmp_path / "none.safetensors"), "--aligned", str(tmp_path),
                              str(tmp_path / "o")])
    assert res.exit_code == 1 and "none.safetensors: file not found" in res.output
    from panini_models.registry import PACKAGE_WEIGHTS
    if not (PACKAGE_WEIGHTS / "default.safetensors").exists():
        res = runner.invoke(app, ["restore", "--aligned", str(tmp_path), str(tmp_path / "o")])
        assert res.exit_code == 1 and "bundled default model is not in this installation" in res.output


def test_whole_photos_faces_pasted_and_background_kept(model_file, tmp_path):
    photo = need(DATA / "whole_photos" / "facerec_two_people.jpg")
    pytest.importorskip("dlib", reason="dlib (dlib-bin) is not installed")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(photo, src / "two.jpg")
    noface = np.full((200, 300, 3), 120, np.uint8)
    cv2.imwrite(str(src / "wall.png"), noface)
    out = tmp_path / "out"
    res = run(model_file, "--save", "cmp", "--force", src, out)        # random weights: past the check
    assert res.exit_code == 0, res.output
    recs = {r["path"].split("/")[-1]: r for r in records(out)}
    # the two people (the default detector also takes a blurred hand at the right edge,
    # 36 px, for a face: benchmarks/results/detect_default.md)
    two = recs["two.jpg"]
    big = [b for b in two["boxes"] if b[2] - b[0] > 100]
    assert len(big) == 2 and two["faces"] == len(two["boxes"]) == len(two["theta"]) <= 3, two["boxes"]
    assert all(c["restored"] for c in two["checks"])
    assert recs["wall.png"]["faces"] == 0
    assert np.array_equal(cv2.imread(str(out / "restored_imgs" / "wall.png")), noface)   # unchanged
    orig = cv2.imread(str(photo)).astype(int)
    restored = cv2.imread(str(out / "restored_imgs" / "two.jpg")).astype(int)
    assert restored.shape == orig.shape
    # pixels far from every face box are the original's (up to JPEG re-encoding)
    mask = np.ones(orig.shape[:2], bool)
    for x0, y0, x1, y1 in recs["two.jpg"]["boxes"]:
        w, h = x1 - x0, y1 - y0
        mask[max(0, int(y0 - h)): int(y1 + h), max(0, int(x0 - w)): int(x1 + w)] = False
    assert np.abs(restored - orig)[mask].mean() < 3.0
    assert np.abs(restored - orig)[~mask].mean() > 3 * np.abs(restored - orig)[mask].mean()   # faces pasted
    assert len(list((out / "cmp").glob("two_*.png"))) == two["faces"]


def test_kill_9_then_rerun_leaves_complete_outputs(model_file, tmp_path):
    """SIGKILL in the middle, then the same command again: every output exists and decodes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "in"
    src.mkdir()
    for i in range(24):
        cv2.imwrite(str(src / f"{i:02d}.png"), face(256, seed=i))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "panini_cli", "restore", "-m", str(model_file), "--aligned", "-q",
           "--save", "faces,cmp", str(src), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "restored_imgs").glob("*.png"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(list((out / "restored_imgs").glob("*.png")))
    assert 0 < partial < 24, "the kill should land mid-run"
    subprocess.run(cmd, check=True, timeout=300)
    for i in range(24):
        img = cv2.imread(str(out / "restored_imgs" / f"{i:02d}.png"))
        assert img is not None and img.shape == (128, 128, 3), i
        assert cv2.imread(str(out / "cmp" / f"{i:02d}_00.png")) is not None, i
    assert not list(out.rglob(".panini-*.tmp"))                  # stale temp files from the kill are cleared
    finished = [r for r in records(out) if r["status"] in ("done", "exists")]
    assert {r["path"] for r in finished} == {str(p) for p in src.glob("*.png")}
    assert not [r for r in records(out) if r["status"] == "failed"]
