"""The torch port of dlib's MMOD CNN face detector: parser, network, geometry, detector class.

The port is proven the way the golden tests prove Panini-Net: against the original,
here dlib's own `cnn_face_detection_model_v1`, on real photos and small crops.
"""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import DATA, REPO, need

dlib = pytest.importorskip("dlib")
torch = pytest.importorskip("torch")

from panini_cli import detectors as D                                   # noqa: E402
from panini_cli.faces import Face, FaceModelError, ffhq_quad           # noqa: E402
from panini_models.dlib_format import MMODFormatError, _Reader, parse_mmod   # noqa: E402
from panini_models.mmod import (MMODDetector, MMODNet, auto_precision, pyramid_layout,   # noqa: E402
                                 relu_bits_, tile_pyramid, tile_pyramid_u8)
from panini_models.mmod_pyramid import uncovered                       # noqa: E402

WHOLE, ALIGNED, UTK = DATA / "whole_photos", DATA / "faces_aligned", DATA / "trainset" / "utkface"


@pytest.fixture(scope="module")
def model_path():
    try:
        return D.find_mmod_model()
    except FaceModelError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ours(model_path):
    return MMODDetector(model_path)


def rgb(path, side=None):
    img = cv2.imread(str(need(path)))[:, :, ::-1]
    if side and max(img.shape[:2]) > side:
        f = side / max(img.shape[:2])
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def test_reader_primitives():
    r = _Reader(bytes([0x01, 0x05, 0x81, 0x05, 0x02, 0x34, 0x12, 0x01, 0x03, 0x81, 0x01]) + b"1" + b"\x01\x02hi")
    assert r.int() == 5 and r.int() == -5 and r.int() == 0x1234
    assert r.float() == 1.5                                 # mantissa 3, exponent -1
    assert r.bool() is True and r.string() == "hi"
    with pytest.raises(MMODFormatError):
        r.int()                                             # past the end


def test_parser_reads_the_whole_network(model_path, tmp_path):
    spec = parse_mmod(model_path)                           # raises if any byte is left over
    shapes = [c.weight.shape for c in spec.convs]
    assert shapes == [(16, 3, 5, 5), (32, 16, 5, 5), (32, 32, 5, 5), (45, 32, 5, 5), (45, 45, 5, 5),
                      (45, 45, 5, 5), (1, 45, 9, 9)]
    assert [c.stride for c in spec.convs] == [(2, 2)] * 3 + [(1, 1)] * 4
    assert [c.relu for c in spec.convs] == [True] * 6 + [False]
    assert spec.windows == [(80, 80, "")] and 0 < spec.nms_iou < 1
    assert spec.layer_names.count("con") == 7 and spec.layer_names.count("relu") == 6
    assert np.allclose(spec.mean_rgb, (122.782, 117.001, 104.298), atol=1e-3)
    data = model_path.read_bytes()
    (tmp_path / "cut.dat").write_bytes(data[: len(data) // 2])
    with pytest.raises(MMODFormatError):
        parse_mmod(tmp_path / "cut.dat")


def test_pyramid_layout_geometry():
    rects, H, W = pyramid_layout(375, 500)
    sizes = [(y1 - y0 + 1, x1 - x0 + 1) for x0, y0, x1, y1 in rects]
    assert sizes[0] == (375, 500) and all(h >= 5 for h, _ in sizes)
    for (h, w), (h2, w2) in zip(sizes, sizes[1:]):
        assert (h2, w2) == (int(h * 5 / 6), int(w * 5 / 6))
    for i, a in enumerate(rects):                           # inside the canvas, 10 px apart
        assert a[0] >= 11 and a[1] >= 11 and a[2] < W - 11 + 1 and a[3] < H
        for b in rects[i + 1:]:
            assert a[2] + 10 < b[0] or b[2] + 10 < a[0] or a[3] + 10 < b[1] or b[3] + 10 < a[1]


def test_relu_bits_equals_relu():
    x = torch.randn(4, 16, 9, 11).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, :5] = torch.tensor([-0.0, 0.0, float("inf"), -float("inf"), -1e-30])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        y = x.to(dtype)
        want = torch.relu(y)
        got = relu_bits_(y.clone())
        assert torch.equal(got, want) and not torch.signbit(got).any(), dtype   # -0.0 becomes +0.0 too


def test_uncovered_bands_complement_the_tiles():
    for h, w, H, W in ((375, 500, None, None), (40, 33, None, None), (160, 160, 300, 290)):
        rects, ch, cw = pyramid_layout(h, w)
        H, W = H or ch, W or cw                                        # a batch canvas may be larger
        count = np.zeros((H, W), int)
        for x0, y0, x1, y1 in rects:
            count[y0:y1 + 1, x0:x1 + 1] += 1
        for y0, y1, x0, x1 in uncovered(rects, H, W):
            count[y0:y1, x0:x1] += 1
        assert (count == 1).all()                                      # every pixel exactly once


def _photo_rgb(side=300):
    return rgb(WHOLE / "facerec_two_people.jpg", side)


def test_fast_pyramid_matches_the_reference():
    """tile_pyramid_u8 (uint8 levels, raw values, mean outside the tiles) against
    tile_pyramid (fp32 levels, normalised, zero outside): within 3 / 255 per pixel; the
    margin of a larger batch canvas holds the mean as well."""
    img = _photo_rgb()
    mean = torch.tensor((122.782, 117.001, 104.298))
    rects, ch, cw = pyramid_layout(*img.shape[:2])
    t = torch.from_numpy(img[None])
    ref = tile_pyramid((t.permute(0, 3, 1, 2).float() - mean[:, None, None]) / 256.0, rects, (ch, cw))
    fast = torch.full((1, ch + 7, cw + 5, 3), float("nan"))
    tile_pyramid_u8(t, rects, fast, mean)
    assert not fast.isnan().any()
    norm = (fast - mean) / 256.0
    diff = (norm[0, :ch, :cw].permute(2, 0, 1) - ref[0]).abs()
    assert diff.max() * 256 <= 3.0 and diff.mean() * 256 < 0.3, (diff.max() * 256, diff.mean() * 256)
    assert norm[0, ch:].abs().max() < 1e-6 and norm[0, :, cw:].abs().max() < 1e-6


def test_folded_normalisation_equals_the_normalised_input(model_path):
    """MMODNet(raw_input=True) on raw 0-255 values gives the scores MMODNet gives on
    (x - mean) / 256: the fold is exact up to float rounding."""
    spec = parse_mmod(model_path)
    plain, raw = MMODNet(spec).eval(), MMODNet(spec, raw_input=True).eval()
    img = torch.from_numpy(_photo_rgb(700)[None]).permute(0, 3, 1, 2).float()
    mean = torch.tensor(spec.mean_rgb)[:, None, None]
    rects, ch, cw = pyramid_layout(*img.shape[2:])
    canvas = tile_pyramid((img - mean) / 256.0, rects, (ch, cw))      # the whole pyramid, blanks included
    with torch.inference_mode():
        a, b = plain(canvas), raw(canvas * 256.0 + mean)
    assert a.shape == b.shape and (a - b).abs().max() < 1e-3, (a - b).abs().max()
    assert a.max() > 0                                                 # a face is in there


def test_auto_precision():
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    assert auto_precision(torch.device("cpu")) == ("bf16" if amx else "fp32")
    assert auto_precision(torch.device("cuda", 0)) == "fp32"
    with pytest.raises(ValueError):
        MMODDetector(D.find_mmod_model(), precision="int8")


PORT_IMAGES = [(WHOLE / "deepface_couple.jpg", 300), (WHOLE / "dlib_2008_001322.jpg", None),
               (WHOLE / "facerec_two_people.jpg", 360), (WHOLE / "skimage_astronaut.png", 320),
               (UTK / "100_1_0_20170110183726390.jpg.chip.jpg", None),
               (ALIGNED / "diffpir_ffhq_69037.png", None)]


@pytest.fixture(scope="module")
def port_cases(model_path):
    ref = dlib.cnn_face_detection_model_v1(str(model_path))
    cases = []
    for path, side in PORT_IMAGES:
        img = rgb(path, side)
        d = ref(img, 0)
        cases.append((img, np.array([[r.rect.left(), r.rect.top(), r.rect.right(), r.rect.bottom(), r.confidence]
                                     for r in d]).reshape(-1, 5)))
    return cases


def test_port_equals_dlib(ours, port_cases):
    found = 0
    for img, want in port_cases:
        got = ours([img])[0]
        assert got.shape == want.shape, (img.shape, got, want)
        assert np.abs(got[:, :4] - want[:, :4]).max(initial=0) <= 1
        assert np.abs(got[:, 4] - want[:, 4]).max(initial=0) < 1e-3
        found += len(want)
    assert found >= 7                                       # the comparison covered real detections


def test_batched_equals_one_by_one(ours, port_cases):
    images = [img for img, _ in port_cases] + [port_cases[0][0]]    # mixed sizes, one repeated
    alone = [ours([im])[0] for im in images]
    for a, b in zip(alone, ours(images)):
        assert a.shape == b.shape and np.array_equal(a[:, :4], b[:, :4])
        assert np.abs(a[:, 4] - b[:, 4]).max(initial=0) < 1e-4


def test_bf16_fast_path_finds_what_fp32_finds(model_path, port_cases):
    """The fast path (uint8 pyramid, bf16 convs) against the exact fp32 port: the same
    faces on the port images (boxes overlapping, as the winning pyramid position may move
    by one step), scores within 0.1."""
    fast = MMODDetector(model_path, precision="bf16")
    ref = MMODDetector(model_path)
    n = 0
    for img, _ in port_cases:
        a, b = ref([img])[0], fast([img])[0]
        assert len(a) == len(b), (a, b)
        for box in a:
            j = int(np.argmin(np.abs(b[:, :4] - box[:4]).sum(1)))
            assert _iou(box[:4], b[j, :4]) > 0.7 and abs(box[4] - b[j, 4]) < 0.1, (box, b[j])
            n += 1
    assert n >= 7


def _iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(w, 0) * max(h, 0)
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu(model_path, port_cases):
    cpu, gpu = MMODDetector(model_path), MMODDetector(model_path, device="cuda")
    for img, _ in port_cases:
        a, b = cpu([img])[0], gpu([img])[0]
        assert a.shape == b.shape and np.abs(a - b).max(initial=0) < 1e-2


def test_box_map_removes_the_offset_to_hog_boxes(ours):
    """On faces the map was not fitted on (held-out UTKFace chips), mapped MMOD boxes sit on
    average where HOG's are (centre and side), raw ones do not."""
    hog = dlib.get_frontal_face_detector()
    names = need(REPO / "benchmarks" / "heldout_utkface.txt").read_text().split()[:40]
    raw, mapped = [], []
    for name in names:
        img = cv2.copyMakeBorder(rgb(UTK / name), 100, 100, 100, 100, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        hboxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in hog(img, 1)]
        mboxes = ours([img])[0]
        if len(hboxes) != 1 or len(mboxes) != 1:
            continue
        h = np.array(hboxes[0], float)
        for out, box in ((raw, mboxes[0, :4]), (mapped, D.mmod_to_hog_box(mboxes[0, :4])[0])):
            s = box[2] - box[0] + 1
            out.append([(h[0] + h[2] - box[0] - box[2]) / 2 / s, (h[1] + h[3] - box[1] - box[3]) / 2 / s,
                        np.log((h[2] - h[0] + 1) / s)])
    assert len(raw) >= 30
    raw, mapped = np.abs(np.mean(raw, 0)), np.abs(np.mean(mapped, 0))
    assert raw[1] > 0.04 and mapped[1] < raw[1] / 2, (raw, mapped)     # HOG boxes sit lower
    assert np.all(mapped < 0.03), (raw, mapped)


@pytest.fixture(scope="module")
def cnn68():
    return D.make_detector("cnn", "68")


def test_ffhq_crop_error_with_cnn_boxes(cnn68):
    """Re-detecting FFHQ-aligned crops (256 px, centred in a 384 px grey canvas) must give
    back the crop: corner error of the recovered quad in % of the crop side."""
    errors = []
    for name in ["gpen_ffhq_0000%d.png" % i for i in range(5)] + ["barbershop_ii2s_117.png", "diffpir_ffhq_69133.png"]:
        img = cv2.resize(cv2.imread(str(need(ALIGNED / name))), (256, 256), interpolation=cv2.INTER_AREA)
        canvas = cv2.copyMakeBorder(img, 64, 64, 64, 64, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        faces = cnn68.detect(canvas)
        assert faces and faces[0].landmarks68.shape == (68, 2), name
        true = np.array([[63.5, 63.5], [63.5, 319.5], [319.5, 319.5], [319.5, 63.5]])
        errors.append(np.linalg.norm(ffhq_quad(faces[0].landmarks5) - true, axis=1).mean() / 256 * 100)
    assert np.median(errors) < 1.5, errors


def test_detect_many_equals_detect(cnn68, port_cases):
    images = [np.ascontiguousarray(img[:, :, ::-1]) for img, _ in port_cases[:4]]
    many = cnn68.detect_many(images)
    assert sum(len(f) for f in many) >= 5
    for img, batch in zip(images, many):
        alone = cnn68.detect(img)
        assert [f.box for f in alone] == [f.box for f in batch]
        for a, b in zip(alone, batch):
            assert np.array_equal(a.landmarks68, b.landmarks68) and abs(a.score - b.score) < 1e-4
        assert [f.size for f in batch] == sorted((f.size for f in batch), reverse=True)


def test_cnn_finds_a_small_degraded_face_hog_misses(cnn68):
    chip = cv2.imread(str(need(UTK / "100_1_0_20170110183726390.jpg.chip.jpg")))
    small = cv2.resize(cv2.resize(chip, (48, 48), interpolation=cv2.INTER_AREA), (16, 16), interpolation=cv2.INTER_AREA)
    face = cv2.imdecode(cv2.imencode(".jpg", cv2.resize(small, (48, 48)), [cv2.IMWRITE_JPEG_QUALITY, 30])[1], 1)
    canvas = np.full((160, 160, 3), 90, np.uint8)
    canvas[50:98, 60:108] = face
    (f,) = cnn68.detect(canvas)
    assert 40 < (f.box[0] + f.box[2]) / 2 < 130 and 25 < (f.box[1] + f.box[3]) / 2 < 120 and 30 < f.size < 80
    assert D.make_detector("hog").detect(canvas) == []


def test_factory_and_lazy_torch():
    assert isinstance(D.make_detector("hog", "5"), D.HogDetector)
    assert isinstance(D.make_detector("cnn", "5", device="cpu"), D.CnnDetector)
    with pytest.raises(ValueError):
        D.make_detector("yolo")
    code = "import sys, panini_cli.detectors; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_detector_option_reaches_every_command(tmp_path):
    """`--detector cnn` in restore / inspect / edit finds a small degraded face; a bad name is one line."""
    pytest.importorskip("dlib", reason="dlib (dlib-bin) is not installed")
    import json

    import cv2
    import numpy as np
    from typer.testing import CliRunner

    from panini_cli.app import app
    from conftest import DATA, need

    face = cv2.resize(cv2.imread(str(need(DATA / "faces_aligned" / "gpen_ffhq_00001.png"))), (120, 120),
                      interpolation=cv2.INTER_AREA)
    face = cv2.imdecode(cv2.imencode(".jpg", cv2.GaussianBlur(face, (0, 0), 1.0), [cv2.IMWRITE_JPEG_QUALITY, 25])[1],
                        cv2.IMREAD_COLOR)
    photo = np.full((240, 320, 3), 128, np.uint8)
    photo[60:180, 100:220] = face
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "p.png"), photo)
    runner = CliRunner()
    res = runner.invoke(app, ["restore", str(src), str(tmp_path / "out"), "--detector", "cnn", "-q"])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["faces"] == 1
    x0, y0, x1, y1 = rec["boxes"][0]
    assert 100 <= (x0 + x1) / 2 <= 220 and 60 <= (y0 + y1) / 2 <= 180
    res = runner.invoke(app, ["inspect", "--theta", "--detector", "cnn", str(src / "p.png")])
    assert res.exit_code == 0 and "p.png\t0\t" in res.output, res.output
    res = runner.invoke(app, ["edit", "--detector", "cnn", "-o", str(tmp_path / "e"), "-q", str(src / "p.png")])
    assert res.exit_code == 0, res.output
    clip = need(DATA / "video" / "keep_real_3.mp4")
    res = runner.invoke(app, ["video", str(clip), "-o", str(tmp_path / "v.mp4"), "--duration", "0.3",
                              "--detector", "cnn", "--json", "-q"])
    assert res.exit_code == 0 and json.loads(res.stdout.strip().splitlines()[-1])["faces"] >= 5, res.output
    res = runner.invoke(app, ["restore", str(src), str(tmp_path / "out2"), "--detector", "cnn-degraded", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out2" / "manifest.jsonl").read_text().splitlines()[0])["faces"] == 1
    bad = runner.invoke(app, ["restore", str(src), str(tmp_path / "x"), "--detector", "yolo"])
    assert bad.exit_code == 1 and "hog" in bad.output and len(bad.output.strip().splitlines()) == 1


def _face(lm, score):
    lm = np.asarray(lm, float)
    return Face((lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()), score, lm)


def test_distinct_faces_keeps_the_best_of_one_person_and_every_other_person():
    a = np.array([[30, 40], [60, 40], [45, 55], [35, 70], [55, 70]], float)
    same = _face(a + 2, 0.5)                                  # 2 px off, eyes 30 px apart: the same face
    best = _face(a, 3.0)
    other = _face(a + [80, 0], 1.0)
    assert [id(f) for f in D.distinct_faces([same, best, other])] == [id(best), id(other)]
    near = _face(a + 12, 0.5)                                 # 12 px off: another face
    assert [id(f) for f in D.distinct_faces([near, best])] == [id(best), id(near)]


def test_a_face_found_at_two_pyramid_levels_is_given_once():
    """At a low cut the fine-tuned weights find the portrait's face at two scales (boxes of
    52 and 90 px that dlib's overlap test keeps apart); the landmarks agree, so one face."""
    img = cv2.imread(str(REPO / "examples" / "facerec_obama_240p.jpg"))
    det = D.CnnDetector(weights="degraded", threshold=0.5)
    boxes = det.boxes_many([np.ascontiguousarray(img[:, :, ::-1])])[0]
    assert len(boxes) >= 2                                    # the test would show nothing otherwise
    assert len(det.detect(img)) == 1


def test_without_nms_every_position_above_the_cut_comes_back(ours, port_cases):
    """nms=False (what the confirming search reads): more boxes, the same best score, and
    every box NMS keeps among them."""
    img = port_cases[0][0]
    kept, every = ours([img], -1.0)[0], ours([img], -1.0, nms=False)[0]
    assert len(every) > len(kept) > 0
    assert every[:, 4].max() == kept[0, 4]
    assert {tuple(r) for r in kept.tolist()} <= {tuple(r) for r in every.tolist()}
