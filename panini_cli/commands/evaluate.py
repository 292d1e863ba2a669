"""`panini evaluate RESTORED_DIR GT_DIR`: PSNR and SSIM per image and their means.

Images are paired by relative path without extension (restored `a/b.png` <-> GT
`a/b.jpg`), else by file stem when that stem is unique in GT_DIR. The metric protocol
is documented in panini_models/training/metrics.py (8-bit, RGB by default, SSIM with
an 11x11 Gaussian window, sigma 1.5). Identity: dlib's face descriptor distance between
the ground truth's face and the same region of the restored image (panini_cli/identity.py;
the face is found on the ground truth, or the whole image is taken as an aligned crop when
none is found); below 0.6 dlib calls them the same person. LPIPS and FID are not computed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from ..console import console, err_console, fail

NOT_COMPUTED = {
    "lpips": "not computed: needs ImageNet backbone weights, which no offline package ships",
    "fid": "not computed: needs Inception weights, which no offline package ships",
}


def _num(v: float):
    return v if math.isfinite(v) else "inf"


def pair_images(restored_dir: Path, gt_dir: Path):
    """-> ([(name, restored path, gt path)], unmatched restored names, unmatched gt names)."""
    from .. import images

    restored = images.list_images([restored_dir], recursive=True)
    gts = images.list_images([gt_dir], recursive=True)
    by_rel = {str(rel.with_suffix("")): path for path, rel in gts}
    by_stem: dict[str, list[Path]] = {}
    for path, rel in gts:
        by_stem.setdefault(rel.stem, []).append(path)
    pairs, lost, used = [], [], set()
    for path, rel in restored:
        key = str(rel.with_suffix(""))
        gt = by_rel.get(key)
        if gt is None and len(by_stem.get(rel.stem, [])) == 1:
            gt = by_stem[rel.stem][0]
        if gt is None:
            lost.append(str(rel))
            continue
        pairs.append((str(rel), path, gt))
        used.add(gt)
    unused = [str(rel) for path, rel in gts if path not in used]
    return pairs, lost, unused


def evaluate(
    restored_dir: Path = typer.Argument(..., help="Folder of restored images.", exists=True, file_okay=False),
    gt_dir: Path = typer.Argument(..., help="Folder of ground-truth images.", exists=True, file_okay=False),
    space: str = typer.Option("rgb", "--space", help="rgb (all three channels) or y (BT.601 luma)."),
    resize: bool = typer.Option(False, "--resize", help="Resize restored images to the GT size (bicubic) "
                                                        "instead of failing on a size mismatch."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    per_image: bool = typer.Option(True, "--per-image/--summary", help="Show one row per image."),
    identity: bool = typer.Option(True, "--identity/--no-identity", help="Identity distance (dlib) per pair."),
) -> None:
    """PSNR and SSIM of restored faces against their ground truth (mean over matched pairs)."""
    import cv2

    from panini_models.training.metrics import SPACES, psnr, ssim

    from .. import images

    if space not in SPACES:
        fail(f"--space must be one of {', '.join(SPACES)}")
    try:
        pairs, lost, unused = pair_images(restored_dir, gt_dir)
    except images.ImageError as e:
        fail(str(e))
    if not pairs:
        fail(f"no restored image in {restored_dir} has a ground truth in {gt_dir} "
             "(pairs are matched by relative path or file stem)")
    rows, errors = [], []
    for name, rp, gp in pairs:
        try:
            res = images.to_bgr8(images.read_image(rp))
            gt = images.to_bgr8(images.read_image(gp))
        except images.ImageError as e:
            errors.append(str(e))
            continue
        if res.shape != gt.shape:
            if not resize:
                errors.append(f"{rp}: size {res.shape[1]}x{res.shape[0]} differs from the ground truth "
                              f"{gt.shape[1]}x{gt.shape[0]} (use --resize)")
                continue
            res = cv2.resize(res, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_CUBIC)
        rows.append({"name": name, "gt": str(gp), "psnr": psnr(res, gt, space), "ssim": ssim(res, gt, space),
                     **({"identity": identity_distance(res, gt)} if identity else {})})
    for e in errors:
        err_console.print(f"[red]error:[/] {e}", soft_wrap=True)
    if not rows:
        fail("no pair could be evaluated")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr", "ssim", *(["identity"] if identity else []))}
    if identity:
        from ..identity import SAME_PERSON
        mean["same_person"] = sum(r["identity"] < SAME_PERSON for r in rows) / len(rows)
    _print(rows, mean, space, per_image, lost, unused)
    if json_out:
        doc = {"space": space, "count": len(rows), "mean": {k: _num(v) for k, v in mean.items()},
               "images": [{**r, "psnr": _num(r["psnr"])} for r in rows], "unmatched_restored": lost,
               "unmatched_gt": unused, "errors": errors, "not_computed": NOT_COMPUTED}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(doc, indent=2))
    raise typer.Exit(1 if errors else 0)


def identity_distance(restored, gt) -> float:
    """dlib descriptor distance between the ground truth's face and the same square of `restored`."""
    from .. import faces as facelib
    from ..identity import distance

    found = facelib.DlibDetector("5").detect(gt)
    if found:
        a = facelib.align_matrix(found[0].landmarks5, 256)
        return distance(facelib.cut_crop(gt, a, 256), facelib.cut_crop(restored, a, 256))
    return distance(gt, restored)                     # no face found: an aligned crop


def _print(rows, mean, space, per_image, lost, unused) -> None:
    from rich.table import Table

    from ..identity import SAME_PERSON

    ident = "identity" in mean
    table = Table("image", f"PSNR ({space}) dB", "SSIM", *(["identity dist"] if ident else []), title=f"{len(rows)} pairs")
    if per_image:
        for r in rows:
            table.add_row(r["name"], f"{r['psnr']:.3f}", f"{r['ssim']:.4f}", *([f"{r['identity']:.3f}"] if ident else []))
    table.add_row("[bold]mean[/]", f"[bold]{mean['psnr']:.3f}[/]", f"[bold]{mean['ssim']:.4f}[/]",
                  *([f"[bold]{mean['identity']:.3f}[/] ({mean['same_person']:.0%} < {SAME_PERSON})"] if ident else []))
    console.print(table)
    if lost:
        console.print(f"[yellow]{len(lost)} restored image(s) without ground truth[/], e.g. {lost[0]}")
    if unused:
        console.print(f"[yellow]{len(unused)} ground-truth image(s) without a restored image[/]")
    console.print("LPIPS and FID: not computed (no offline package ships their backbone weights)")
