#!/usr/bin/env bash
# The CUDA checks of issue 16 in one go, on the GPU machine, from the repo root:
#
#   here:    scripts/prepare_device_carry.sh           # wheels + blobs into .device_carry/, prints the carry list
#   device:  run(command="bash scripts/device_check.sh", carry=[".device_carry"], timeout_s=420)
#
# It installs what the device lacks from .device_carry (dlib-bin wheel; imageio-ffmpeg and its ffmpeg;
# dlib's landmark/recognition/detector files), runs tests/test_cuda.py, the GPU benchmarks
# (benchmarks/forward.py and benchmarks/restore.py with --device cuda), and writes everything under
# $OUT: report.md (read this first), device_check.log, junit.xml, cuda_numbers.json, forward.json,
# restore.json and, time allowing, forward_compile.json (7 files; the tool returns 8 at most). It keeps to
# DEVICE_BUDGET_S seconds (default 290: each step gets what is left, later steps are skipped and said so), so it ends
# within 5 minutes on an H100/H200 with the machine already started.
#
# Dry run on a machine without CUDA (plumbing, install step, report; every CUDA number is absent):
#   PYTHON_VERSION=3.11 DEST=/tmp/dry_carry scripts/prepare_device_carry.sh
#   PANINI_DEVICE_DRY_RUN=1 DEVICE_CARRY=/tmp/dry_carry OUT=/tmp/dry_out bash scripts/device_check.sh
# The dry run runs the tests' CPU analogue (PANINI_CUDA_DRY_RUN=1) and the benchmarks' `dry-cpu`
# device on the small model.
set -u -o pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
OUT=${OUT:-$REPO/.device_out}
CARRY=${DEVICE_CARRY:-$REPO/.device_carry}
PY=${PY:-python3}
DRY=${PANINI_DEVICE_DRY_RUN:-0}
BUDGET=${DEVICE_BUDGET_S:-290}
SITE=${SITE:-/tmp/panini_site}
FFMPEG=ffmpeg-linux-x86_64-v7.0.2
WEIGHTS=/tmp/panini_weights               # benchmark models, made once, shared by the benchmarks
NOTES=/tmp/panini_device_notes.txt        # steps skipped or stopped (read by the report; not in $OUT)
mkdir -p "$OUT"
T0=$SECONDS

left() { echo $((BUDGET - (SECONDS - T0))); }
step() { echo; echo "=== [$((SECONDS - T0)) s, $(left) s left] $*"; }
# run_for SECONDS NAME CMD...: CMD under a timeout (SIGINT first, so pytest still writes its report)
run_for() {
    local t=$1 name=$2
    shift 2
    if [ "$t" -lt 10 ]; then
        echo "skipped $name: time budget spent" | tee -a "$NOTES"
        return 99
    fi
    timeout -s INT -k 15 "$t" "$@"
    local rc=$?
    [ $rc -eq 124 ] && echo "$name stopped at its time limit ($t s)" | tee -a "$NOTES"
    echo "$name: exit $rc ($((SECONDS - T0)) s)"
    return $rc
}

install() {
    step "install from $CARRY into $SITE"
    rm -rf "$SITE" && mkdir -p "$SITE/bin" "$SITE/face_recognition_models/models" || return 1
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$CARRY"/wheels/*.whl || return 1
    cp -r "$CARRY"/site/. "$SITE"/ || return 1
    "$PY" - "$CARRY" "$SITE" "$FFMPEG" <<'EOF' || return 1
import lzma, os, shutil, sys
from pathlib import Path
carry, site, ffmpeg = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
def unxz(src, dst):
    with lzma.open(src) as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g, 1 << 22)
exe = site / "imageio_ffmpeg" / "binaries" / ffmpeg
unxz(carry / "blobs" / f"{ffmpeg}.xz", exe)
exe.chmod(0o755)
frm = site / "face_recognition_models"
(frm / "__init__.py").write_text("")   # a stand-in: panini_cli only looks up its models/ folder
for xz in sorted((carry / "blobs" / "frm").glob("*.xz")):
    unxz(xz, frm / "models" / xz.stem)
print("unpacked:", exe.name, *[p.name for p in (frm / "models").iterdir()])
EOF
    ln -sfn "$REPO/models" "$SITE/panini_models"          # the import names pyproject maps the folders to
    ln -sfn "$REPO/panini_cli" "$SITE/panini_cli"
    printf '#!/bin/sh\nexec "%s" -m panini_cli "$@"\n' "$(command -v "$PY")" > "$SITE/bin/panini"
    chmod +x "$SITE/bin/panini"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
    export IMAGEIO_FFMPEG_EXE="$SITE/imageio_ffmpeg/binaries/$FFMPEG"
    "$PY" - <<'EOF' || return 1
import importlib.metadata as md, dlib, imageio_ffmpeg, subprocess, panini_models, panini_cli
from panini_cli.faces import find_predictor
exe = imageio_ffmpeg.get_ffmpeg_exe()
ver = subprocess.run([exe, "-version"], capture_output=True, text=True).stdout.splitlines()[0]
print("dlib", dlib.__version__, dlib.__file__)
print("imageio_ffmpeg", imageio_ffmpeg.__version__, imageio_ffmpeg.__file__, "->", ver)
print("landmarks 5:", find_predictor("5"))
print("panini_models", panini_models.__file__, "| panini_cli", panini_cli.__file__)
for name in ("torch", "numpy", "opencv-python-headless", "typer", "rich", "joblib", "safetensors", "pytest"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
EOF
}

main() {
    step "machine"
    echo "dry run: $DRY; python: $(command -v "$PY") ($("$PY" -V 2>&1)); cores: $(nproc); $(free -g | awk '/Mem:/ {print $2 " GiB RAM"}')"
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | head -5
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), \
'devices', torch.cuda.device_count(), *(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))"
    if [ "$DRY" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "no CUDA device here: stopping (set PANINI_DEVICE_DRY_RUN=1 for a dry run)"
        return 1
    fi
    install || { echo "INSTALL FAILED"; return 1; }
    export PANINI_SHARED="$CARRY/shared" PANINI_HOME=/tmp/panini_home PYTHONUNBUFFERED=1
    export PANINI_CUDA_REPORT="$OUT/cuda_numbers.json"
    rm -f "$PANINI_CUDA_REPORT" "$NOTES"
    local dev=cuda mfr=mfr sr=sr
    if [ "$DRY" = 1 ]; then
        export PANINI_CUDA_DRY_RUN=1
        dev=dry-cpu mfr=small sr=small
    fi

    step "tests/test_cuda.py"
    run_for $(( $(left) - 100 )) tests "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -rA \
        --junitxml="$OUT/junit.xml" --durations=15

    step "benchmarks/forward.py: MFR and SR (model only)"
    local t=$(( $(left) - 60 )) variants="mfr sr" shares="0.75 0.25" maxb=128
    [ $t -gt 90 ] && t=90
    [ "$DRY" = 1 ] && variants="small" shares="1" maxb=2
    run_for $t forward "$PY" benchmarks/forward.py --device "$dev" --variants $variants --shares $shares --max-batch $maxb \
        --random-weights sr --weights-dir "$WEIGHTS" --budget-s $((t - 5)) --json "$OUT/forward.json" \
        --configs official:fp32 fast:fp32 fast:bf16 fast:fp16 ref:bf16 ref:fp32 fast:fp32:ieee

    local bs=16
    [ -f "$OUT/forward.json" ] && bs=$("$PY" - "$OUT/forward.json" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))["variants"]
rows = [r for r in next(iter(v.values()), {}).get("rows", []) if r.get("config") == "fast:bf16" and "faces_s" in r]
print(max(rows, key=lambda r: r["faces_s"])["batch"] if rows else 16)
EOF
)
    bs=${bs:-16}
    step "benchmarks/restore.py: MFR, 1024 px outputs, batch $bs"
    local prec=bf16 faces=128 photos=16 rdev=$dev model="$WEIGHTS/mfr.safetensors"
    [ "$DRY" = 1 ] && prec=fp32 faces=4 photos=2 rdev=cpu model="$WEIGHTS/small.safetensors"
    local src=(--model "$model")
    [ -f "$model" ] || src=(--variant "$mfr")
    t=$(( $(left) - 8 ))
    [ $t -gt 75 ] && t=75
    run_for $t restore "$PY" benchmarks/restore.py --device "$rdev" "${src[@]}" --precision "$prec" \
        --batch-size "$(( bs > 32 ? 32 : bs ))" --faces $faces --photos $photos --landmarks 5 --workers 4 \
        --json "$OUT/restore.json"

    t=$(( $(left) - 8 ))
    if [ $t -ge 50 ]; then
        step "benchmarks/forward.py: torch.compile, MFR bf16 batch $bs"
        run_for $t compile "$PY" benchmarks/forward.py --device "$dev" --variants "$mfr" --weights-dir "$WEIGHTS" \
            --configs fast:bf16:compile --batches "$bs" --compile-timeout $((t - 5)) --budget-s $((t - 2)) \
            --json "$OUT/forward_compile.json"
    else
        echo "skipped torch.compile: $t s left (a compile of MFR takes about a minute)" | tee -a "$NOTES"
    fi

    t=$(( $(left) - 8 ))
    [ $t -gt 45 ] && t=45
    step "benchmarks/detect.py: the CNN face detector on $rdev (the carried photo(s) at 1x, 2x, 3.2x)"
    run_for $t detect "$PY" benchmarks/detect.py --only time --device "$rdev" --landmarks 5 \
        --photo-scales 1 2 3.2 --detectors hog cnn-fp32 cnn-bf16 > "$OUT/detect.md"

    step "report"
    "$PY" - "$OUT" "$DRY" "$((SECONDS - T0))" "$NOTES" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, dry, took, notes = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], Path(sys.argv[4])
def load(name):
    p = out / name
    try:
        return json.loads(p.read_text()) if p.exists() else None
    except json.JSONDecodeError:
        return None
lines = [f"# Device check{' (DRY RUN on the CPU: no CUDA number here)' if dry else ''}", "",
         f"took {took} s; full log: device_check.log"]
if notes.exists() and notes.read_text().strip():
    lines += ["", "**not done:** " + "; ".join(notes.read_text().strip().splitlines())]
goals = []
junit = out / "junit.xml"
lines += ["", "## tests/test_cuda.py", ""]
if junit.exists():
    root = ET.parse(junit).getroot()
    cases = root.iter("testcase")
    rows, counts = [], {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for c in cases:
        kind, msg = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = c.find(tag)
            if el is not None:
                kind = {"failure": "failed"}.get(tag, tag)
                msg = next(iter((el.get("message") or el.text or "").strip().splitlines()), "")[:160]
        counts[kind] += 1
        rows.append(f"| {c.get('name')} | {kind} | {float(c.get('time', 0)):.1f} | {msg.replace('|', '/')} |")
    lines += [", ".join(f"{v} {k}" for k, v in counts.items()), "", "| test | result | s | message |",
              "| --- | --- | --- | --- |", *rows]
    goals.append(("every CUDA test passes", counts["failed"] == 0 and counts["error"] == 0 and counts["passed"] > 0,
                  f"{counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, {counts['skipped']} skipped"))
else:
    lines.append("no junit.xml: the tests did not finish")
    goals.append(("every CUDA test passes", False, "no result"))
nums = load("cuda_numbers.json")
if nums:
    lines += ["", "## measured numbers (tests)", "", "```"] + [f"{k}: {json.dumps(v, default=str)}" for k, v in sorted(nums.items())] + ["```"]
for name in ("forward.json", "forward_compile.json"):
    f = load(name)
    if not f:
        lines += ["", f"## {name}: missing"]
        continue
    lines += ["", f"## {name} ({f.get('device')})", "",
              "rates: " + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in (f.get("rates") or {}).items()), "",
              "| variant | config | batch | faces/s | ms | first s | peak MiB | diff b1 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for variant, v in f["variants"].items():
        if v.get("error"):
            lines.append(f"| {variant} | worker failed: {v['error']} | | | | | | |")
        for r in v["rows"]:
            if "faces_s" in r:
                lines.append(f"| {variant} | {r['config']} | {r['batch']} | {r['faces_s']:.1f} | {r['ms']:.2f} | "
                             f"{r['first_s']:.1f} | {r['peak_mib']:.0f} | {r.get('diff', float('nan')):.1e} |")
            else:
                lines.append(f"| {variant} | {r.get('config')} | {r.get('batch')} | "
                             f"{'OOM' if r.get('oom') else r.get('skipped', '-')} | | | | |")
    g = f.get("goals") or {}
    if name == "forward.json" and "mfr_fp32_b1_speedup_vs_official" in g:
        s, b = g["mfr_fp32_b1_speedup_vs_official"], g["mfr_bf16_best_faces_s"]
        c = load("forward_compile.json")
        compiled = [r["faces_s"] for v in (c or {}).get("variants", {}).values() for r in v["rows"] if "faces_s" in r]
        b = max([x for x in [b, *compiled] if x] or [0])
        goals.append(("MFR fp32 batch 1: ours >= 5x the official op structure", bool(s and s >= 5), f"{s or 0:.2f}x"))
        goals.append(("MFR bf16 best batch >= 300 faces/s", bool(b and b >= 300), f"{b or 0:.1f} faces/s"))
r = load("restore.json")
if r:
    a, w = r["aligned"], r["whole"]
    lines += ["", f"## restore ({r['model']}, {r['in_size']} -> {r['out_size']} px, {r['device']} {r['precision']}, "
              f"batch {r['batch_size']})", "",
              f"model only: forward {r['model_only']['forward']:.1f} faces/s, Restorer (uint8 in/out) "
              f"{r['model_only']['restorer']:.1f} faces/s",
              f"restore --aligned: {a['faces']} faces in {a['seconds']:.1f} s = {a['faces_s']:.1f} faces/s = "
              f"{a['vs_forward']:.2f}x the forward; model busy {a['model_busy']:.0%}",
              f"whole photos: {w['faces']} faces in {w['files']} files, {w['seconds']:.1f} s = {w['faces_s']:.1f} faces/s; "
              f"model busy {w['model_busy']:.0%}", "",
              "where the time goes (serial pass, ms per face):", "", "| case | faces | " +
              " | ".join(r["breakdown"]["whole"]["stages"]) + " | total |", "| --- " * 9 + "|"]
    for case, br in r["breakdown"].items():
        n = max(br["faces"], 1)
        lines.append(f"| {case} | {br['faces']} | " + " | ".join(f"{v / n * 1e3:.1f}" for v in br["stages"].values())
                     + f" | {br['seconds'] / n * 1e3:.1f} |")
    goals.append(("restore --aligned end to end >= 0.8x the model-only rate", a["vs_forward"] >= 0.8,
                  f"{a['vs_forward']:.2f}x ({a['faces_s']:.1f} vs {r['model_only']['forward']:.1f} faces/s)"))
else:
    lines += ["", "## restore.json: missing"]
    goals.append(("restore --aligned end to end >= 0.8x the model-only rate", False, "no result"))
lines[3:3] = ["", "## goals", "", "| goal | met | measured |", "| --- | --- | --- |",
              *[f"| {g} | {'yes' if ok else 'NO'} | {m} |" for g, ok, m in goals]]
det = out / "detect.md"
if det.exists() and det.read_text().strip():
    lines += ["", "## face detection (benchmarks/detect.py --only time)", "", det.read_text().strip()]
(out / "report.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines[:12 + len(goals)]))
EOF
    ls -la "$OUT"
}

main 2>&1 | tee "$OUT/device_check.log"
