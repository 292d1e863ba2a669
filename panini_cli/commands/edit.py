"""`panini edit IMAGE... --mask-bias 0.1[,0.2,...]`: restorations steered by the DAFI masks."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..console import console, err_console, fail
from ..modelopts import COLOUR, DETECTOR, FORCE, STRENGTH


def edit(
    paths: List[str] = typer.Argument(..., metavar="IMAGE...", help="Image files, folders or glob patterns."),
    mask_bias: str = typer.Option("0.1", "--mask-bias", help="Comma-separated biases added to the GAN-side "
                                                             "masks (kept in [0, 1]); one variant each."),
    blocks: Optional[str] = typer.Option(None, "--blocks", help="DAFI blocks to bias, e.g. 4,5 (1=4 px .. 5=64 px; default all)."),
    only: Optional[str] = typer.Option(None, "--only", help="gan: the paper's Y_GPB (image features zeroed, Eq. 13); "
                                                           "image: Y_IFE (GAN features zeroed, Eq. 12)."),
    out_dir: Path = typer.Option(Path("results") / "edits", "--output", "-o", help="Output folder."),
    model: str = typer.Option("default", "--model", "-m", help="Registry name or weight file."),
    aligned: bool = typer.Option(False, "--aligned", help="Inputs are aligned face crops."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders."),
    upscale: Optional[float] = typer.Option(None, "--upscale", "-s", help="As for restore."),
    landmarks: str = typer.Option("68", "--landmarks", help="dlib landmark model: 68 or 5."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda[:N]."),
    gpu: Optional[int] = typer.Option(None, "--gpu", help="Use CUDA device N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16, fp16 (CUDA)."),
    detector: str = DETECTOR,
    force: bool = FORCE,
    strength: float = STRENGTH,
    colour: bool = COLOUR,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """One restored variant per mask bias, plus a labelled contact sheet per image.

    The bias is added to the GAN-prior side of each chosen DAFI mask and clamped to
    [0, 1]; the image side gets one minus it (Eq. 7 keeps its form). Positive bias:
    more GAN prior (cleaner, less faithful); negative: more of the input.
    """
    from .. import guard, images, outputs, pipeline
    from ..compose import compose, write_picture
    from ..modelopts import load_restorer, make_preparer, resolve_device

    try:
        biases = [float(v) for v in mask_bias.split(",") if v.strip()]
        block_list = [int(v) for v in blocks.split(",")] if blocks else None
    except ValueError:
        fail(f"--mask-bias takes numbers like 0.1,0.2 and --blocks integers like 4,5")
    if not biases:
        fail("--mask-bias needs at least one value")
    if only not in (None, "gan", "image"):
        fail("--only takes gan or image")
    if block_list and any(not 1 <= b <= 5 for b in block_list):
        fail("--blocks are numbered 1..5 (DAFI1 = 4 px ... DAFI5 = 64 px)")
    try:
        outputs.check_writable(out_dir)
    except OSError as e:
        fail(str(e))
    restorer = load_restorer(model, resolve_device(device, gpu), precision)
    if restorer.config.variant == "catconv":
        fail(f"model '{model}' is the catconv ablation: it has no DAFI masks to bias")
    switches = {"zero_img": only == "gan", "zero_gan": only == "image"}
    variants = [{"mask_bias": b, "blocks": block_list, **switches} for b in biases]
    tags = [f"_bias{b:+.2f}" + (f"_{only}" if only else "") for b in biases]

    problems: list = []
    jobs = images.list_images(paths, recursive=recursive, problems=problems)
    failed = len(problems)
    for p in problems:
        err_console.print(f"[red]error:[/] {p}", soft_wrap=True)
    protected = images.ProtectedPaths(p for p, _ in jobs)
    stems = outputs.output_stems(rel for _, rel in jobs)
    preparer = make_preparer(restorer.in_size, aligned, landmarks, detector=detector,
                                 device=str(restorer.device))
    written = 0
    for item in pipeline.run(jobs, preparer, restorer, variants):
        if item.error:
            failed += 1
            err_console.print(f"[red]error:[/] {item.path}: {item.error}", soft_wrap=True)
            continue
        if not item.faces:
            err_console.print(f"note: {item.path}: no face found; nothing to edit", soft_wrap=True)
            continue
        pictures, reasons = [], []
        check = guard.GuardOptions(force, strength, colour)
        threshold = (restorer.vdr_stats or {}).get("threshold")
        for v, tag in enumerate(tags):
            pasted, verdicts = guard.judge_item(item, v, aligned, upscale, restorer.in_size, check, restorer.gate,
                                                threshold)
            reasons += [v.reason for v in verdicts if not v.restored]
            picture = compose(item, v, aligned, upscale, restorer.in_size, pasted)
            target = out_dir / item.rel.parent / f"{stems[str(item.rel)]}{tag}.png"
            write_picture(target, picture, protected)
            pictures.append(picture)
            written += 1
        if reasons:
            err_console.print(f"note: {item.path}: {len(reasons)} face variant(s) left as they were by the "
                              f"do-no-harm check ({reasons[0]}); --force shows them", soft_wrap=True)
        sheet = contact_sheet([images.to_bgr8(p) for p in pictures],
                              [t.lstrip("_").replace("_", " ") for t in tags])
        images.write_image(out_dir / item.rel.parent / f"{stems[str(item.rel)]}_sheet.png", sheet, protected=protected)
    if not quiet:
        console.print(f"{written} variants written to {out_dir}" + (f"; {failed} failed" if failed else ""))
    raise typer.Exit(1 if failed else 0)


def contact_sheet(pictures: list, labels: list[str], tile: int = 256):
    """Variants side by side at a common height, each with its label on a white strip."""
    import cv2
    import numpy as np

    tiles = []
    for pic, label in zip(pictures, labels):
        h, w = pic.shape[:2]
        scaled = cv2.resize(pic, (max(1, round(w * tile / h)), tile),
                            interpolation=cv2.INTER_AREA if h > tile else cv2.INTER_CUBIC)
        strip = np.full((28, scaled.shape[1], 3), 255, np.uint8)
        cv2.putText(strip, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([strip, scaled], 0))
    gap = np.full((tile + 28, 4, 3), 255, np.uint8)
    row = [tiles[0]]
    for t in tiles[1:]:
        row += [gap, t]
    return np.concatenate(row, 1)
