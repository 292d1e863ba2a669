"""Quality as a user meets it: whole photos through the CLI, faces the model never saw.

    python benchmarks/quality.py [--model default] [--n 100] [--cases mild,moderate,small,old]

Faces: the 300 UTKFace chips held out of the default model's training
(benchmarks/heldout_utkface.txt, tight portraits: the FFHQ square reaches past the
photo) and the HQ FFHQ / CelebA-HQ crops of ../shared/data/faces_aligned, placed into a
larger photo ("placed") and cut tight ("tight"). Each ground-truth photo is degraded:

  mild      JPEG 40-70 only, at the photo's own size                 restore
  moderate  blur 1-2 px, x4 down, noise 3-8, JPEG 50-80              restore --upscale 4
  small     x4 down (faces of 30-60 px), JPEG 60-90                  restore --upscale 4
  old       blur 1.5-2.5 px, x3 down, noise 6-12, JPEG 25-40, x3 up  restore
  group     the ground truth shrunk x3 (faces of ~40-80 px, as in a group photo), then
            blur 0.4-1 px, noise 2-5, JPEG 40-70                     restore

and run through `panini restore` as a user runs it (whole-photo mode, default flags),
then again with --force (what the model does alone). Per case a table: PSNR and SSIM
against the ground truth over the face's FFHQ square, identity distance (dlib's face
descriptor, ground truth to output; < 0.6 is dlib's "same person"), for the degraded
input (enlarged by bicubic where the case upscales, which is exactly what a face left
as it was becomes), panini, and panini --force; the faces restored, left, undetected.
`--dump FILE` writes every face's check signals beside its gain (for fitting the check).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PANINI_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))
from panini_cli import faces as facelib  # noqa: E402
from panini_models.training.metrics import psnr, ssim  # noqa: E402

HQ = ("gpen_ffhq_", "barbershop_", "diffpir_", "ddnm_", "psp_input", "restyle_face")
CASES = {
    #         blur (px at GT), down, noise, jpeg, upscale back in the input, CLI --upscale
    "mild": dict(blur=(0, 0), down=1, noise=(0, 0), jpeg=(40, 70), back=False, upscale=1),
    "moderate": dict(blur=(1, 2), down=4, noise=(3, 8), jpeg=(50, 80), back=False, upscale=4),
    "small": dict(blur=(0, 0), down=4, noise=(0, 0), jpeg=(60, 90), back=False, upscale=4),
    "old": dict(blur=(1.5, 2.5), down=3, noise=(6, 12), jpeg=(25, 40), back=True, upscale=1),
    # faces of a group photo: the ground truth itself is small (64 px faces), restored in place
    "group": dict(blur=(0.4, 1.0), down=1, noise=(2, 5), jpeg=(40, 70), back=False, upscale=1, gt_down=3),
}


def ground_truths(n_utk: int, work: Path, first: int = 0, hq: bool = True) -> list[dict]:
    """[{name, path, box(x0,y0,x1,y1) of the face square}] written under work/gt (cached)."""
    gt = work / "gt"
    gt.mkdir(parents=True, exist_ok=True)
    index = gt / f"index_{first}_{n_utk}_{int(hq)}.json"
    if index.exists():
        return json.loads(index.read_text())
    det = facelib.DlibDetector("68", pad=0.25)
    items = []
    names = (REPO / "benchmarks" / "heldout_utkface.txt").read_text().split()[first:first + n_utk]
    sources = [("utk", SHARED / "data" / "trainset" / "utkface" / n) for n in names]
    hq_faces = sorted(p for p in (SHARED / "data" / "faces_aligned").iterdir() if p.name.startswith(HQ)) if hq else []
    sources += [("placed", p) for p in hq_faces] + [("tight", p) for p in hq_faces]
    rng = np.random.default_rng(0)
    for kind, p in sources:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if kind == "utk":
            photo = img[4:196, 4:196]                # 192 px: divisible by 4 and by 3
        elif kind == "placed":                       # the FFHQ square at 240 px in a 480x360 photo
            face = cv2.resize(img, (240, 240), interpolation=cv2.INTER_AREA)
            photo = _background(rng, 360, 480)
            w = facelib.soft_mask(240, feather=0.15, margin=0.0)[..., None]
            y, x = 60, int(rng.integers(40, 200))
            photo[y:y + 240, x:x + 240] = (face * w + photo[y:y + 240, x:x + 240] * (1 - w)).astype(np.uint8)
        else:                                        # tight: the middle of a 300 px FFHQ square
            photo = cv2.resize(img, (300, 300), interpolation=cv2.INTER_AREA)[66:258, 54:246]
        photo = np.ascontiguousarray(photo)
        found = det.detect(photo)
        if not found:
            continue                                  # no ground-truth landmarks: cannot score
        a = facelib.align_matrix(found[0].landmarks5, 256)
        corners = facelib.ffhq_quad(found[0].landmarks5)
        x0, y0 = np.clip(corners.min(0), 0, None)
        x1, y1 = np.minimum(corners.max(0), [photo.shape[1], photo.shape[0]])
        name = f"{kind}_{p.stem.split('.')[0]}.png"
        cv2.imwrite(str(gt / name), photo)
        items.append({"name": name, "kind": kind, "box": [int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))],
                      "affine": a.tolist()})
    index.write_text(json.dumps(items))
    return items


def _background(rng, h: int, w: int) -> np.ndarray:
    """A smooth, face-free photo background: blurred coloured noise over a gradient."""
    base = rng.integers(40, 220, (3, 3, 3)).astype(np.uint8)
    bg = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    tex = cv2.GaussianBlur(rng.normal(0, 25, (h, w, 3)).astype(np.float32), (0, 0), 3)
    return np.clip(bg + tex, 0, 255).astype(np.uint8)


def degrade(photo: np.ndarray, case: dict, rng) -> np.ndarray:
    img = photo.astype(np.float32)
    sigma = rng.uniform(*case["blur"])
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    h, w = photo.shape[:2]
    d = case["down"]
    if d > 1:
        img = cv2.resize(img, (w // d, h // d), interpolation=cv2.INTER_AREA)
    noise = rng.uniform(*case["noise"])
    if noise > 0:
        img = img + rng.normal(0, noise, img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*case["jpeg"]))])
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if case["back"] and d > 1:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return img


def run_cli(inputs: Path, out: Path, upscale: float, model: str, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "panini_cli", "restore", str(inputs), str(out), "--model", model,
           "--quiet", "--overwrite", *extra]
    if upscale != 1:
        cmd += ["--upscale", str(upscale)]
    t = time.perf_counter()
    subprocess.run(cmd, check=False)
    return time.perf_counter() - t


class Identity:
    """dlib's face descriptor of a face given by its FFHQ square (same points for every image)."""

    def __init__(self):
        import dlib
        path = facelib.find_predictor("5").parent / "dlib_face_recognition_resnet_model_v1.dat"
        self.net, self.dlib = dlib.face_recognition_model_v1(str(path)), dlib

    def __call__(self, photo: np.ndarray, affine: np.ndarray) -> np.ndarray:
        crop = facelib.cut_crop(photo, np.asarray(affine), 256)
        pts = facelib._FFHQ_DLIB5 * 256
        rect = self.dlib.rectangle(40, 40, 216, 216)
        shape = self.dlib.full_object_detection(rect, [self.dlib.point(int(round(x)), int(round(y))) for x, y in pts])
        return np.array(self.net.compute_face_descriptor(np.ascontiguousarray(crop[:, :, ::-1]), shape))


def read_manifest(out: Path) -> dict[str, dict]:
    recs = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        r = json.loads(line)
        recs[Path(r["path"]).name] = r
    return recs


def evaluate_case(name: str, case: dict, items: list[dict], work: Path, model: str, ident: Identity,
                  dump: list | None, only_force: bool = False, tag: str = "", skip_force: bool = False,
                  cli_extra: tuple = ()) -> None:
    cdir = work / (model.replace("/", "_") + tag) / name
    (cdir / "in").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(list(CASES).index(name))
    gts = {}
    g = case.get("gt_down", 1)
    for it in items:
        gt = cv2.imread(str(work / "gt" / it["name"]))
        if g > 1:
            gt = cv2.resize(gt, (gt.shape[1] // g, gt.shape[0] // g), interpolation=cv2.INTER_AREA)
        gts[it["name"]] = gt
        target = cdir / "in" / it["name"]
        lq = degrade(gt, case, rng)
        if not target.exists():
            cv2.imwrite(str(target), lq)
    k = case["upscale"]
    times = {"panini": 0.0}
    for tag, extra in (("panini", []), ("force", ["--force"])):
        if (tag == "force" and not skip_force) or (tag == "panini" and not only_force):
            times[tag] = run_cli(cdir / "in", cdir / tag, k, model, [*extra, *cli_extra])
    times.setdefault("force", 0.0)
    man = {t: read_manifest(cdir / t) if (cdir / t / "manifest.jsonl").exists() else {} for t in ("panini", "force")}
    rows = {t: {"psnr": [], "ssim": [], "id": []} for t in ("input", "panini", "force")}
    counts = {"restored": 0, "left": 0, "undetected": 0}
    for it in items:
        gt = gts[it["name"]]
        x0, y0, x1, y1 = (int(round(v / g)) for v in it["box"])
        affine = facelib._compose(np.array(it["affine"]), np.array([[g, 0, 0.5 * g - 0.5], [0, g, 0.5 * g - 0.5]]))
        ref_id = ident(gt, affine) if ident else None
        lq = cv2.imread(str(cdir / "in" / it["name"]))
        outs = {"input": cv2.resize(lq, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_CUBIC)
                if lq.shape != gt.shape else lq}
        for tag in ("panini", "force"):
            path = cdir / tag / "restored_imgs" / it["name"]
            outs[tag] = cv2.imread(str(path)) if path.exists() else None
        scores = {}
        for tag, img in outs.items():
            if img is None or img.shape != gt.shape:
                img = outs["input"]
            p = psnr(img[y0:y1, x0:x1], gt[y0:y1, x0:x1])
            s = ssim(img[y0:y1, x0:x1], gt[y0:y1, x0:x1])
            d = float(np.linalg.norm(ident(img, affine) - ref_id)) if ident else float("nan")
            rows[tag]["psnr"].append(p)
            rows[tag]["ssim"].append(s)
            rows[tag]["id"].append(d)
            scores[tag] = (p, s, d)
        rec = man["panini"].get(it["name"], {})
        checks = rec.get("checks", [])
        if not checks:
            counts["undetected"] += 1
        else:
            counts["restored" if checks[0]["restored"] else "left"] += 1
        if dump is not None:
            frec = man["force"].get(it["name"], {})
            for c in frec.get("checks", [])[:1]:
                dump.append({"case": name, "name": it["name"], "kind": it["kind"], **c,
                             "gain_psnr": scores["force"][0] - scores["input"][0],
                             "gain_ssim": scores["force"][1] - scores["input"][1],
                             "gain_id": scores["input"][2] - scores["force"][2]})
    n = len(items)
    print(f"\n### {name}: {n} photos, --upscale {k}; {counts['restored']} faces restored, {counts['left']} left "
          f"as they were, {counts['undetected']} undetected; CLI {times['panini']:.0f} s / --force {times['force']:.0f} s")
    print("| output | PSNR | SSIM | identity dist | PSNR vs input | SSIM vs input |")
    print("|---|---|---|---|---|---|")
    base = rows["input"]
    for tag, label in (("input", "degraded input" + (" (bicubic x%d)" % k if k != 1 else "")),
                       ("panini", "panini (default flags)"), ("force", "panini --force")):
        r = rows[tag]
        print(f"| {label} | {np.mean(r['psnr']):.2f} | {np.mean(r['ssim']):.4f} | {np.mean(r['id']):.3f} | "
              f"{np.mean(r['psnr']) - np.mean(base['psnr']):+.2f} | {np.mean(r['ssim']) - np.mean(base['ssim']):+.4f} |")
    worst = min(np.array(rows["panini"]["psnr"]) - np.array(base["psnr"]))
    print(f"worst single face, default flags: {worst:+.2f} dB against its input")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=100, help="held-out UTKFace faces (of 300)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--kinds", default="utk,placed,tight")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "panini_quality")
    ap.add_argument("--dump", type=Path, help="write per-face check signals and gains (JSONL)")
    ap.add_argument("--first", type=int, default=0, help="first held-out UTKFace face used (calibration: 150)")
    ap.add_argument("--no-hq", action="store_true", help="held-out UTKFace faces only")
    ap.add_argument("--only-force", action="store_true", help="run --force only (calibration data)")
    ap.add_argument("--no-identity", action="store_true", help="skip the identity column (faster)")
    ap.add_argument("--skip-force", action="store_true",
                    help="default flags only (the --force rows then show the input)")
    ap.add_argument("--detector", help="pass --detector to the CLI (outputs go to a directory of their own)")
    a = ap.parse_args()
    if not (SHARED / "data").is_dir():
        print(f"needs {SHARED / 'data'} (../shared beside the repository)")
        return 2
    items = [i for i in ground_truths(a.n, a.work, a.first, not a.no_hq) if i["kind"] in a.kinds.split(",")]
    ident = None if a.no_identity else Identity()
    dump = [] if a.dump else None
    per_kind = ", ".join(f"{k} {sum(i['kind'] == k for i in items)}" for k in a.kinds.split(","))
    print(f"model {a.model}; {len(items)} ground-truth photos ({per_kind})")
    for name in a.cases.split(","):
        evaluate_case(name, CASES[name], items, a.work, a.model, ident, dump, a.only_force,
                      f"_{a.first}" + (f"_{a.detector}" if a.detector else ""), a.skip_force,
                      ("--detector", a.detector) if a.detector else ())
    if dump is not None:
        a.dump.write_text("".join(json.dumps(d) + "\n" for d in dump))
    return 0


if __name__ == "__main__":
    sys.exit(main())
