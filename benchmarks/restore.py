"""End-to-end `panini restore` against the model-only forward rate, in one run.

    python benchmarks/restore.py                    # small model (random weights), aligned + whole photos
    python benchmarks/restore.py --model mfr        # an imported model or weight file
    python benchmarks/restore.py --device cuda --variant mfr --precision bf16 --batch-size 16 \
        --faces 128 --landmarks 5 --json restore.json   # on a GPU: recipe MFR weights, 1024 px outputs

Prints faces/s for: the model alone (a forward on a batch already on the device, and the Restorer
with uint8 crops in and out, same batch size), restore --aligned on aligned faces, and restore on
whole photos; the share of the command's time the model is busy; and where the time goes, stage by
stage (decode, detect, align, model, paste-back, encode), from one serial in-process pass that calls
the same functions as the command (its own threads overlap these stages, so their sum exceeds the
command's time). The command's rate is faces / its own `seconds` (after the model is loaded);
the wall column also counts process start and the model load.

Inputs: ../shared/data/faces_aligned and ../shared/data/whole_photos when present (the latter with 4
photos at least, else examples/ and those), else the faces of those photos aligned here (dlib,
--landmarks) at the model's input size; copied in turn up to --faces / --photos.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PANINI_SHARED", REPO.parent / "shared"))
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def small_model(path: Path) -> str:
    import torch

    from panini_models.checkpoints import save_weights
    from panini_models.panini import PRESETS, PaniniNet

    torch.manual_seed(0)
    m = PaniniNet(PRESETS["small"])
    save_weights(path, m.state_dict(), "panini", json.loads(m.config.to_json()))
    return str(path)


def variant_model(variant: str, path: Path) -> tuple[str, str]:
    """A model of PRESETS[variant]: the reference recipe when ../shared has it, else random (forward.py's)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from forward import save_model

    return str(path), save_model(variant, path)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTS)


def fill(folder: Path, sources: list[Path], n: int) -> Path:
    """n files in `folder`, copies of `sources` in turn (same bytes, new names)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        shutil.copy(src, folder / f"{i:04d}_{src.name}")
    return folder


def aligned_sources(tmp: Path, photos: list[Path], size: int, landmarks: str) -> list[Path]:
    """../shared's aligned faces, else the faces of `photos` cut here at the model's input size."""
    shared = SHARED / "data" / "faces_aligned"
    if shared.exists():
        return _images(shared)
    import cv2

    from panini_cli.faces import DlibDetector, align_face

    det, out = DlibDetector(landmarks), []
    folder = tmp / "aligned_src"
    folder.mkdir()
    for p in photos:
        img = cv2.imread(str(p))
        for j, face in enumerate(det.detect(img)):
            path = folder / f"{p.stem}_{j}.png"
            cv2.imwrite(str(path), align_face(img, face, size)[0])
            out.append(path)
    return out


class Clock:
    """perf_counter after a CUDA synchronisation when the device is a GPU."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch

    def __call__(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
        return time.perf_counter()


def model_only(model: str, crops_dir: Path, n: int, batch: int, device: str, precision: str) -> dict:
    """faces/s of the model alone: the forward on a device batch, and the Restorer on uint8 crops."""
    import cv2
    import torch

    from panini_cli.pipeline import resize_square
    from panini_models import runtime
    from panini_models.registry import load_model
    from panini_models.restorer import Restorer
    from panini_models.tensors import bgr_to_tensor

    clock = Clock(device)
    r = Restorer(load_model(model), device, precision)
    files = _images(crops_dir)[:n]
    crops = [resize_square(cv2.imread(str(p)), r.in_size) for p in files]
    x = bgr_to_tensor(crops[:batch]).to(device)
    runtime.forward(r.model, x, precision)                        # warm-up
    reps = max(2, n // batch)
    t = clock()
    for _ in range(reps):
        runtime.forward(r.model, x, precision)
    forward_rate = reps * batch / (clock() - t)
    r(crops[:batch])                                              # warm-up
    t = clock()
    for i in range(0, len(crops), batch):
        r(crops[i:i + batch])
    restorer_rate = len(crops) / (clock() - t)
    del r, x
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"forward": forward_rate, "restorer": restorer_rate}


def run_restore(model: str, inputs: Path, out: Path, extra: list[str]) -> tuple[dict, list[dict], float]:
    cmd = [sys.executable, "-m", "panini_cli", "restore", "-m", model, "-q", "--json", *extra, str(inputs), str(out)]
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode not in (0, 1):
        raise SystemExit(res.stderr[-2000:])
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return summary, recs, wall


def breakdown(model: str, inputs: Path, out: Path, aligned: bool, device: str, precision: str, landmarks: str,
              limit: int) -> dict:
    """Seconds per stage over one serial pass with the command's own functions (no overlap)."""
    from panini_cli import compose, images, pipeline
    from panini_models.registry import load_model
    from panini_models.restorer import Restorer

    clock = Clock(device)
    restorer = Restorer(load_model(model), device, precision)
    make_detector = None
    if not aligned:
        from panini_cli.faces import DlibDetector
        make_detector = lambda: DlibDetector(landmarks)          # noqa: E731
    prep = pipeline.Preparer(restorer.in_size, pipeline.FaceOptions(aligned=aligned), make_detector)
    files = _images(inputs)[:limit]
    protected = images.ProtectedPaths([str(p) for p in files])
    out.mkdir(parents=True, exist_ok=True)
    if files:                                                     # warm-up: detector load, CUDA kernels
        item = prep(files[0], Path(files[0].name))
        restorer([f.crop for f in item.faces][:1] or [__import__("numpy").zeros(
            (restorer.in_size, restorer.in_size, 3), "uint8")])
    stages = dict.fromkeys(("decode", "detect", "align", "model", "paste-back", "encode"), 0.0)
    faces = 0
    t_all = clock()
    for p in files:
        item = prep(p, Path(p.name))
        if item.error:
            continue
        for k in ("decode", "detect", "align"):
            stages[k] += item.timings.get(k, 0.0)
        t = clock()
        if item.faces:
            for face, res in zip(item.faces, restorer([f.crop for f in item.faces])):
                face.results.append(res)
        stages["model"] += clock() - t
        faces += len(item.faces)
        if not item.faces and aligned:
            continue
        t = time.perf_counter()
        picture = compose.compose(item, 0, aligned, None, restorer.in_size)
        stages["paste-back"] += time.perf_counter() - t
        t = time.perf_counter()
        compose.write_picture(out / p.name, picture, protected)
        stages["encode"] += time.perf_counter() - t
    total = clock() - t_all
    return {"files": len(files), "faces": faces, "seconds": total, "stages": stages}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="registry name or file (default: a small random model)")
    p.add_argument("--variant", default=None, help="instead of --model: a model of this preset (mfr, sr, ...), "
                                                  "recipe weights when ../shared/reference has them")
    p.add_argument("--faces", type=int, default=12, help="aligned faces to use")
    p.add_argument("--photos", type=int, default=8, help="whole photos to use")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--landmarks", default="68", help="dlib landmark model for whole photos: 68 or 5")
    p.add_argument("--workers", type=int, default=None, help="restore --workers (default: the command's)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    shared_photos = _images(SHARED / "data" / "whole_photos") if (SHARED / "data" / "whole_photos").exists() else []
    photo_files = shared_photos if len(shared_photos) >= 4 else _images(REPO / "examples") + shared_photos
    device_flags = ["--device", args.device, "--precision", args.precision]
    if args.workers:
        device_flags += ["--workers", str(args.workers)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = "given"
        if args.variant:
            model, weights = variant_model(args.variant, tmp / f"{args.variant}.safetensors")
        else:
            model = args.model or small_model(tmp / "small.safetensors")
            weights = "given" if args.model else "random"
        from panini_models.registry import load_model
        cfg = load_model(model).config
        faces = fill(tmp / "faces", aligned_sources(tmp, photo_files, cfg.in_size, args.landmarks), args.faces)
        photos = fill(tmp / "photos", photo_files, args.photos)
        bs = ["--batch-size", str(args.batch_size)]
        rate = model_only(model, faces, args.faces, args.batch_size, args.device, args.precision)
        s_al, recs_al, wall_al = run_restore(model, faces, tmp / "out_aligned", ["--aligned", *bs, *device_flags])
        s_wh, recs_wh, wall_wh = run_restore(model, photos, tmp / "out_whole",
                                             [*bs, *device_flags, "--landmarks", args.landmarks])
        br_al = breakdown(model, faces, tmp / "br_aligned", True, args.device, args.precision, args.landmarks,
                          min(args.faces, 32))
        br_wh = breakdown(model, photos, tmp / "br_whole", False, args.device, args.precision, args.landmarks,
                          min(args.photos, 16))

    def share(recs, key):
        return sum(r.get("timings", {}).get(key, 0.0) for r in recs)

    def secs(s):
        return s["seconds"] or 1e-9

    model_al, model_wh = share(recs_al, "model"), share(recs_wh, "model")
    prep_wh = share(recs_wh, "decode") + share(recs_wh, "detect") + share(recs_wh, "align")
    result = {
        "model": model if weights == "given" else f"{args.variant or 'small'} ({weights} weights)",
        "in_size": cfg.in_size, "out_size": cfg.out_size, "device": args.device, "precision": args.precision,
        "batch_size": args.batch_size, "model_only": rate,
        "aligned": {"files": s_al["done"], "faces": s_al["faces"], "seconds": s_al["seconds"], "wall": wall_al,
                    "faces_s": s_al["faces"] / secs(s_al), "model_busy": model_al / secs(s_al),
                    "vs_forward": s_al["faces"] / secs(s_al) / rate["forward"]},
        "whole": {"files": s_wh["done"], "faces": s_wh["faces"], "seconds": s_wh["seconds"], "wall": wall_wh,
                  "faces_s": s_wh["faces"] / secs(s_wh), "model_busy": model_wh / secs(s_wh),
                  "prep_over_model": prep_wh / max(model_wh, 1e-9)},
        "breakdown": {"aligned": br_al, "whole": br_wh},
    }
    print(f"model: {result['model']} ({cfg.in_size} -> {cfg.out_size} px)   device {args.device} {args.precision}   "
          f"batch size {args.batch_size}")
    print("case | files | faces | s | wall s | faces/s | model-only faces/s (forward / Restorer) | vs forward | "
          "model busy | (decode+detect+align)/model")
    mo = f"{rate['forward']:.2f} / {rate['restorer']:.2f}"
    print(f"model only | - | {args.faces} | - | - | {rate['forward']:.2f} | {mo} | 1.00 | 100% | -")
    a, w = result["aligned"], result["whole"]
    print(f"restore --aligned | {a['files']} | {a['faces']} | {a['seconds']:.1f} | {wall_al:.1f} | {a['faces_s']:.2f} | "
          f"{mo} | {a['vs_forward']:.2f} | {a['model_busy']:.0%} | "
          f"{(share(recs_al, 'decode') + share(recs_al, 'align')) / max(model_al, 1e-9):.2f}")
    print(f"restore photos | {w['files']} | {w['faces']} | {w['seconds']:.1f} | {wall_wh:.1f} | {w['faces_s']:.2f} | "
          f"{mo} | {w['faces_s'] / rate['forward']:.2f} | {w['model_busy']:.0%} | {w['prep_over_model']:.2f}")
    print("\nwhere the time goes (one serial pass, the command's functions, ms per face):")
    print("case | files | faces | " + " | ".join(br_wh["stages"]) + " | total")
    for name, br in (("aligned", br_al), ("whole photos", br_wh)):
        n = max(br["faces"], 1)
        print(f"{name} | {br['files']} | {br['faces']} | " +
              " | ".join(f"{v / n * 1e3:.1f}" for v in br["stages"].values()) + f" | {br['seconds'] / n * 1e3:.1f}")
    print("model busy = summed model time / the command's seconds. Decode, detect and align run in worker threads "
          "ahead of the model, and writing in a background thread, so their sums can exceed the time they add. "
          "'model' in the stage table is the Restorer call: uint8 -> tensor, transfer, forward, back to uint8.")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
