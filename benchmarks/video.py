"""`panini video` on this machine: speed against the model alone, memory against length, flicker.

Every measurement runs in its own process (so peak RSS is its own). Prints one table.

- speed: frames/s of the whole command (decode, track, align, model, paste, encode, mux)
  on the long clip (one face per frame), with the command's CPU layout (commands/video.py
  cpu_streams: model streams x torch threads), against the model alone on as many crops
  at the same batch size, in its faster layout of two: one stream on all cores, or the
  video's streams (the issue's goal: >= 0.9x);
- memory: peak RSS of the Python process for a clip and for the same clip joined ten
  times (the goal: flat). The two ffmpeg processes (decoder, encoder) are not counted:
  a forked child's max RSS is the parent's until exec, so getrusage cannot tell; they
  hold a few frames of pipe and codec buffers;
- flicker: mean absolute frame-to-frame change inside the face box (0-255 levels), of
  the output and of the input, with landmark smoothing off and on, and with the vDR
  also smoothed along the track (--smooth-vdr); beside it the mean frame-to-frame change
  of the vDR and of theta (the DAFI5 mask mean) the model used (clips with one face).

The model is the `small` preset with random weights (seed 0) unless --model is given:
random weights restore nothing, but they turn a jittering crop into a jittering face
just as a trained net does, which is what the flicker column compares.

    python benchmarks/video.py                       # keep_real_3, 2 s (and x10), batch 1
    python benchmarks/video.py --seconds 3 --batch-size 4 --smooth 0 2 4 --smooth-vdr 2 5
    python benchmarks/video.py --streams 1 --threads 1   # another CPU layout for the video runs
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from panini_cli.malloc import TUNED   # no torch import

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PANINI_SHARED", REPO.parent / "shared"))
CLIP = SHARED / "data" / "video" / "keep_real_3.mp4"


def small_model(folder: Path) -> Path:
    import torch

    from panini_models.checkpoints import save_weights
    from panini_models.panini import PRESETS, PaniniNet
    torch.manual_seed(0)
    model = PaniniNet(PRESETS["small"])
    path = folder / "small.safetensors"
    save_weights(path, model.state_dict(), "panini", json.loads(model.config.to_json()))
    return path


def child_video(args) -> dict:
    import numpy as np
    import torch

    from panini_cli import video as vid
    from panini_cli.video import chunks as video_chunks
    from panini_cli.modelopts import load_restorer, make_preparer

    torch.set_num_threads(args.threads)
    restorer = load_restorer(args.model, "cpu", "fp32")
    detector = make_preparer(restorer.in_size, False, "68").make_detector()
    detector.detect(np.zeros((8, 8, 3), np.uint8))        # load dlib's models outside the timing
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    settings = vid.Settings(smooth=args.smooth[0], smooth_vdr=args.smooth_vdr[0], detect_every=args.detect_every or None)
    used, put = [], video_chunks.ChunkWriter.put

    def recording(writer, item):                           # the vDR and theta of every face, in frame order
        if item is not None:                               # None: the end
            used.extend((f.results[0].vdr, f.results[0].theta) for f in item.faces)
        put(writer, item)
    if args.record:     # not in the memory runs: a small array kept per frame splits the heap (~0.1 MB a frame)
        video_chunks.ChunkWriter.put = recording
    t, c = time.perf_counter(), time.process_time()
    s = vid.restore_video(Path(args.clip), Path(args.out), settings, restorer, "bench",
                          detector, batch_size=args.batch_size, resume=False, streams=args.streams)
    wall = time.perf_counter() - t
    steps = {}
    if used and s["faces"] == s["frames"]:                 # one face per frame: the sequence is its track
        steps = {"vdr_step": float(np.abs(np.diff([v for v, _ in used], axis=0)).mean()),
                 "theta_step": float(np.abs(np.diff([t for _, t in used])).mean())}
    return {"frames": s["frames"], "faces": s["faces"], "seconds": wall, "cpu": time.process_time() - c,
            "rss_before_mb": rss0 / 1024, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **steps}


def child_model(args) -> dict:
    """The model alone: `streams` threads each calling it on batches, torch threads each."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from panini_cli.modelopts import load_restorer
    torch.set_num_threads(args.threads)
    restorer = load_restorer(args.model, "cpu", "fp32")
    rng = np.random.default_rng(0)
    n, b = args.faces, args.batch_size
    crops = [rng.integers(0, 255, (restorer.in_size, restorer.in_size, 3), dtype=np.uint8) for _ in range(n)]
    batches = [crops[i:i + b] for i in range(0, n, b)]
    if args.streams == 1:                                   # in this thread, as pipeline.run does
        restorer(crops[:b])                                 # warm-up
        t = time.perf_counter()
        for batch in batches:
            restorer(batch)
        return {"faces": n, "seconds": time.perf_counter() - t}
    with ThreadPoolExecutor(args.streams) as pool:
        list(pool.map(restorer, [crops[:b]] * args.streams))           # warm-up, every stream
        t = time.perf_counter()
        list(pool.map(restorer, batches))
    return {"faces": n, "seconds": time.perf_counter() - t}


def layout(model: str, cores: int) -> tuple[int, int]:
    """`panini video`'s (model streams, torch threads each) for this model on this CPU."""
    from panini_cli.commands.video import cpu_streams
    from panini_models import registry
    return cpu_streams(registry.load_model(model, "cpu").config.in_size, cores)


def spawn(mode: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", mode] + [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    env = {**os.environ, **TUNED}     # the glibc malloc settings the `panini` CLI runs with, in every child
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def frames_bgr(path: Path):
    import imageio_ffmpeg
    import numpy as np
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="bgr24")
    w, h = next(gen)["size"]
    for b in gen:
        yield np.frombuffer(b, np.uint8).reshape(h, w, 3)


def flicker(inp: Path, outs: dict[str, Path]) -> dict[str, float]:
    """Mean |frame t - frame t-1| inside the face box (the largest face found in the input at
    t; the last box when none is found), for the input and each output."""
    import numpy as np

    from panini_cli.faces import DlibDetector
    det = DlibDetector()
    boxes, box = [], None
    for f in frames_bgr(inp):
        found = det.detect(f)
        if found:
            box = [int(round(v)) for v in found[0].box]
        boxes.append(box)
    result = {}
    for name, path in {"input": inp, **outs}.items():
        prev, diffs = None, []
        for f, b in zip(frames_bgr(path), boxes):
            f = f.astype(np.float32)
            if prev is not None and b is not None:
                x0, y0, x1, y1 = max(0, b[0]), max(0, b[1]), b[2], b[3]
                diffs.append(float(np.abs(f[y0:y1, x0:x1] - prev[y0:y1, x0:x1]).mean()))
            prev = f
        result[name] = float(np.mean(diffs)) if diffs else float("nan")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, default=CLIP)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of the clip cut from --clip")
    ap.add_argument("--repeat", type=int, default=10, help="the long clip is the short one joined this many times")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=3, help="speed: (long video, model alone) runs, alternated")
    ap.add_argument("--detect-every", type=int, default=0, help="whole-frame face search every N frames "
                                                                 "(0: the command's default, once a second)")
    ap.add_argument("--smooth", type=float, nargs="+", default=[0.0, 2.0])
    ap.add_argument("--smooth-vdr", type=float, nargs="+", default=[3.0],
                    help="vDR time constants (frames) of the extra rows, with the last --smooth (0: no row)")
    ap.add_argument("--streams", type=int, default=0, help="model streams in the video runs (0: as `panini video`)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per stream there (0: as `panini video`)")
    ap.add_argument("--model", type=str, default=None, help="weight file or registry name (default: small, random)")
    ap.add_argument("--child", choices=["video", "model"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--faces", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--record", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_video(args) if args.child == "video" else child_model(args)))
        return
    if not args.clip.exists():
        raise SystemExit(f"{args.clip} not found (needs ../shared/data/video, or --clip)")

    from panini_cli import video as vid
    tmp = Path(tempfile.mkdtemp(prefix="panini-bench-video-"))
    model = args.model or str(small_model(tmp))
    short = tmp / "short.mp4"
    subprocess.run([vid.ffmpeg_exe(), "-v", "error", "-y", "-i", str(args.clip), "-t", str(args.seconds),
                    "-c:v", "libx264", "-crf", "12", "-c:a", "copy", str(short)], check=True)
    (tmp / "list.txt").write_text("".join(f"file '{short.name}'\n" for _ in range(args.repeat)))
    long = tmp / "long.mp4"
    subprocess.run([vid.ffmpeg_exe(), "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(tmp / "list.txt"),
                    "-c", "copy", str(long)], check=True)
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    streams, threads = layout(model, cores)
    streams, threads = args.streams or streams, args.threads or threads
    lay = dict(streams=streams, threads=threads)

    common = dict(model=model, batch_size=args.batch_size, detect_every=args.detect_every, **lay)
    # speed: the long clip and the model alone, alternated; this machine's speed drifts by up to
    # 1.5x from minute to minute, so each ratio compares neighbours and the median is reported
    alone_layouts = list(dict.fromkeys([(1, cores), (streams, threads)]))
    pairs = []
    for _ in range(args.pairs):
        v = spawn("video", clip=long, out=tmp / "out_long.mp4", smooth=args.smooth[-1], smooth_vdr=0.0, **common)
        alone = {(st, th): spawn("model", model=model, batch_size=args.batch_size, faces=min(v["faces"], 80),
                                 streams=st, threads=th) for st, th in alone_layouts}
        pairs.append((v, alone))

    rows, outs, steps = [], {}, {}        # flicker and memory: the short clip
    runs = [(s, 0.0) for s in args.smooth] + [(args.smooth[-1], v) for v in args.smooth_vdr if v > 0]
    for s, v in runs:
        name = f"smooth {s:g}" + (f", vdr {v:g}" if v else "")
        out = tmp / f"out_s{s:g}_v{v:g}.mp4"
        r = spawn("video", clip=short, out=out, smooth=s, smooth_vdr=v, record=1, **common)
        outs[name] = out
        steps[name] = (r.get("vdr_step", float("nan")), r.get("theta_step", float("nan")))
        rows.append((f"video, short, {name}", r))
    flick = flicker(short, outs)

    print(f"\nclip {args.clip.name}: {args.seconds:g} s cut ({rows[0][1]['frames']} frames, "
          f"{rows[0][1]['faces']} faces) and that joined {args.repeat} times; batch {args.batch_size}, "
          f"whole-frame search every {args.detect_every or 'second'}, {streams} model stream(s) x {threads} torch "
          f"thread(s), load average at start {load:.1f} on {cores} cores")
    print(f"\nspeed, long clip (smooth {args.smooth[-1]:g}) against the model alone run right after it "
          f"(faces/s; vs model: against the faster model-alone layout)")
    heads = "".join(f"{f'alone {st}x{th}':>12}" for st, th in alone_layouts)
    print(f"{'pair':>5} {'frames':>6} {'faces':>6} {'s':>7} {'frames/s':>9} {heads} {'vs model':>9}")
    ratios = []
    for i, (v, alone) in enumerate(pairs):
        rates = {k: m["faces"] / m["seconds"] for k, m in alone.items()}
        ratios.append(v["faces"] / v["seconds"] / max(rates.values()))
        cols = "".join(f"{rates[k]:12.2f}" for k in alone_layouts)
        print(f"{i + 1:5d} {v['frames']:6d} {v['faces']:6d} {v['seconds']:7.1f} {v['frames'] / v['seconds']:9.2f} "
              f"{cols} {ratios[-1]:8.2f}x")
    print(f"median ratio {sorted(ratios)[len(ratios) // 2]:.2f}x over {len(ratios)} pair(s)")

    print(f"\n{'memory and flicker runs':42} {'frames':>6} {'s':>7} {'frames/s':>9} {'RSS before':>10} {'RSS peak':>9}")
    for name, r in rows + [(f"video, short x{args.repeat}, smooth {args.smooth[-1]:g}", pairs[0][0])]:
        print(f"{name:42} {r['frames']:6d} {r['seconds']:7.1f} {r['frames'] / r['seconds']:9.2f} "
              f"{r['rss_before_mb']:8.0f}MB {r['rss_peak_mb']:7.0f}MB")
    grow = pairs[0][0]["rss_peak_mb"] - rows[len(args.smooth) - 1][1]["rss_peak_mb"]     # same settings, x1
    print(f"\npeak RSS, x{args.repeat} length minus x1: {grow:+.0f} MB")
    print("\nflicker: mean |frame t - frame t-1| inside the face box (levels 0-255); mean |change| of the\n"
          "vDR (per element) and of theta from frame to frame, as the model used them")
    for name, v in flick.items():
        rel = "" if name == "input" else f"   ({v / flick['input']:.2f}x the input)"
        vs, ts = steps.get(name, (float("nan"), float("nan")))
        extra = "" if name == "input" else f"   vDR {vs:.2e}  theta {ts:.2e}"
        print(f"  {name:20} {v:6.2f}{rel:22}{extra}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
