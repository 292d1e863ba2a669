#!/usr/bin/env bash
# Train the successor of the bundled default model on the GPU machine, in one go (issue 15).
#
#   here:    bash scripts/prepare_device_train.sh      # packs .device_train/, prints the device call
#   device:  run(command="bash scripts/device_train.sh", carry=[".device_train"], timeout_s=540)
#   dry run on this CPU (same data path, same outputs, a few steps):
#            DEVICE=cpu MAX_SECONDS=60 OUT=/tmp/dry_out bash scripts/device_train.sh
#
# What it does, from the repo root, in at most ~8 minutes on an H100/H200:
#   1. imports panini from the working tree (no pip install: import names linked in /tmp/panini_site),
#      installs .device_train/wheels/*.whl there if any carried and a needed module is missing
#      (the device image has torch 2.11+cu130, numpy, opencv-python-headless, safetensors, typer,
#      rich, joblib: nothing needs carrying; dlib is not needed there, the landmarks travel);
#   2. cuts the 256 px FFHQ crops of the packed UTKFace chips (.device_train/utkface.npz, made here by
#      scripts/pack_trainset.py: 8.8k training chips + 16 held-out validation faces, landmarks found
#      here with dlib) with panini_cli.faces.align_face: ~10 s on 16 cores;
#   3. takes the DRE of the bundled default model (UDRL-trained, same architecture in preset base128);
#   4. `panini train restore --task base128` (128 -> 256 px): L1 + feature matching on the StyleGAN2
#      discriminator + non-saturating GAN, EMA generator, bf16 autocast, a degradation mixture from
#      compression-only to the paper's Eq. 10 (below), for MAX_SECONDS of wall time (the cosine schedule
#      is fitted to the measured step rate), writing $OUT/latest.safetensors (float16, loadable by
#      `panini restore --model`) every EXPORT_EVERY seconds and $OUT/final.safetensors at the end;
#   5. copies the run's log and config and the last validation strip to $OUT and writes report.md.
#
# $OUT when it comes back (8 files at most, 16 MiB each): final.safetensors (12.9 MiB; or latest.safetensors
# if the run was cut short), report.md, device_train.log, log.jsonl, config.json, samples.png.
# What to do with the weights afterwards: scripts/DEVICE_TRAIN.md.
#
# Settings (environment): DEVICE (cuda | cpu), MAX_SECONDS (training loop, default 420 on cuda, 60 on cpu),
# BATCH (32 | 1), LR_G (4e-4), LR_D (2e-4), WORKERS (12 | 1), EXPORT_EVERY (60 | 20 s), LOSS (gan | l1:
# L1 alone, D not run, ~2.5x the steps), CUT_LIMIT (0 = all chips | 200 on cpu), EMA (0.998), SEED (0).
set -u -o pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
CARRY=${TRAIN_CARRY:-$REPO/.device_train}
OUT=${OUT:-/tmp/panini_device_out}
WORK=${WORK:-/tmp/panini_device_train}
SITE=$WORK/site
DATA=$WORK/utk256
RUN=$WORK/run
if [ "$DEVICE" = cpu ]; then
    d_max=60 d_batch=1 d_workers=1 d_export=20 d_cut=200 d_amp=none d_val=5 d_log=1
else
    d_max=420 d_batch=32 d_workers=12 d_export=60 d_cut=0 d_amp=bf16 d_val=500 d_log=50
fi
MAX_SECONDS=${MAX_SECONDS:-$d_max}
BATCH=${BATCH:-$d_batch}
WORKERS=${WORKERS:-$d_workers}
EXPORT_EVERY=${EXPORT_EVERY:-$d_export}
CUT_LIMIT=${CUT_LIMIT:-$d_cut}
AMP=${AMP:-$d_amp}
VAL_EVERY=${VAL_EVERY:-$d_val}
LOG_EVERY=${LOG_EVERY:-$d_log}
LR_G=${LR_G:-4e-4}
LR_D=${LR_D:-2e-4}
EMA=${EMA:-0.998}
SEED=${SEED:-0}
LOSS=${LOSS:-gan}
export PYTHONUNBUFFERED=1 PANINI_HOME=$WORK/home
mkdir -p "$OUT" "$WORK"
T0=$SECONDS
say() { echo; echo "=== [$((SECONDS - T0)) s] $*"; }

main() {
    say "machine (DEVICE=$DEVICE)"
    echo "python $(command -v "$PY") ($("$PY" -V 2>&1)); $(nproc) cores"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda available', torch.cuda.is_available(), \
*(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))"
    if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "no CUDA device here: stopping (DEVICE=cpu for a dry run)"
        return 1
    fi
    if [ ! -s "$CARRY/utkface.npz" ]; then
        echo "$CARRY/utkface.npz missing: run scripts/prepare_device_train.sh here and carry .device_train"
        return 1
    fi

    say "python path: panini from $REPO"
    mkdir -p "$SITE"
    ln -sfn "$REPO/models" "$SITE/panini_models"          # the import names pyproject maps the folders to
    ln -sfn "$REPO/panini_cli" "$SITE/panini_cli"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    need="import torch, numpy, cv2, safetensors, typer, rich, joblib, panini_models, panini_cli"
    if ! "$PY" -c "$need" 2>/dev/null; then
        if ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
                "$CARRY"/wheels/*.whl || return 1
        fi
        "$PY" -c "$need" || { echo "a needed module is missing (see above)"; return 1; }
    fi
    "$PY" - <<'EOF'
import importlib.metadata as md
names = ("torch", "numpy", "opencv-python-headless", "opencv-python", "safetensors", "typer", "rich", "joblib")
found = []
for n in names:
    try:
        found.append(f"{n} {md.version(n)}")
    except md.PackageNotFoundError:
        pass
print(", ".join(found))
EOF

    say "crops: 256 px FFHQ crops of the packed chips -> $DATA"
    if [ -f "$DATA/.done_$CUT_LIMIT" ]; then
        echo "already there"
    else
        rm -rf "$DATA"
        "$PY" scripts/pack_trainset.py cut "$CARRY/utkface.npz" "$DATA" --size 256 --workers "$(nproc)" \
            --limit "$CUT_LIMIT" || return 1
        touch "$DATA/.done_$CUT_LIMIT"
    fi

    say "DRE: the bundled default model's (UDRL-trained) -> $WORK/dre.safetensors"
    "$PY" - "$WORK/dre.safetensors" <<'EOF' || return 1
import sys
from panini_models.checkpoints import read_weights
from panini_models.training.udrl import export_state
kind, cfg, state, meta = read_weights("models/weights/default.safetensors")
dre = {k[len("dre."):]: v.float() for k, v in state.items() if k.startswith("dre.")}
arch = {"channels": list(cfg["dre_channels"]), "strides": list(cfg["dre_strides"]), "input_size": cfg["dre_input_size"]}
export_state(dre, arch, 1500, sys.argv[1])
print(f"{len(dre)} tensors, {sum(v.numel() for v in dre.values()) / 1e6:.2f} M parameters, {arch}")
EOF

    # Degradations, in 1024-px units (r = 4 keeps a 256 px face at full size). "photo": blur, shrink,
    # noise and JPEG at the photo's size, then the crop's resize to 128 px, as `restore` meets a real
    # photo (models/training/data.py, degrade_photo); "eq10": the paper's Eq. 10 on the 128 px grid.
    cat > "$WORK/train_config.json" <<'EOF'
{
  "degradation_mix": [
    {"name": "jpeg_only", "weight": 0.15, "order": "photo", "sigma": [0, 0], "r": [4, 4.5], "noise": [0, 0], "jpeg": [30, 95]},
    {"name": "down_only", "weight": 0.15, "order": "photo", "sigma": [0, 0], "r": [4, 24], "noise": [0, 0], "jpeg": [60, 100]},
    {"name": "gfpgan_like", "weight": 0.45, "order": "photo", "sigma": [0.2, 10], "r": [4, 32], "noise": [0, 15], "jpeg": [25, 95]},
    {"name": "paper_eq10", "weight": 0.25, "order": "eq10", "sigma": [0.2, 10], "r": [10, 200], "noise": [0, 25], "jpeg": [5, 50]}
  ],
  "l1_weight": 1.0,
  "feature_match_weight": 0.5,
  "gan_weight": 0.005,
  "lr_min": 1e-6,
  "ckpt_every": 1000000,
  "tensorboard": false,
  "samples": 6,
  "cudnn_benchmark": true
}
EOF
    local loss=()
    [ "$LOSS" = l1 ] && loss=(--set gan_weight=0 --set feature_match_weight=0)

    say "train: base128, batch $BATCH, $MAX_SECONDS s, amp $AMP, loss $LOSS"
    rm -rf "$RUN"
    rm -f "$OUT"/latest.safetensors "$OUT"/final.safetensors
    # A hard limit above the budget (model build, validation, the final export): SIGINT first, so the
    # trainer still checkpoints and leaves $OUT/latest.safetensors; KILL 20 s later.
    timeout -s INT -k 20 $((${MAX_SECONDS%.*} + 75)) \
        "$PY" -m panini_cli train restore "$DATA/train" --val-dir "$DATA/val" --out "$RUN" \
        --task base128 --dre "$WORK/dre.safetensors" --config "$WORK/train_config.json" \
        --steps 1000000 --batch-size "$BATCH" --workers "$WORKERS" --device "$DEVICE" --seed "$SEED" \
        --set amp="$AMP" --set lr_g="$LR_G" --set lr_d="$LR_D" --set ema_decay="$EMA" \
        --set max_seconds="$MAX_SECONDS" --set export_every_s="$EXPORT_EVERY" --set export_dir="$OUT" \
        --set val_every="$VAL_EVERY" --set log_every="$LOG_EVERY" "${loss[@]}"
    local rc=$?
    echo "train: exit $rc ($((SECONDS - T0)) s)"

    say "report"
    cp "$RUN/log.jsonl" "$RUN/config.json" "$OUT"/ 2>/dev/null
    last=$(ls "$RUN"/samples/step_*.png 2>/dev/null | tail -1)
    [ -n "$last" ] && cp "$last" "$OUT/samples.png"
    "$PY" - "$OUT" "$rc" "$((SECONDS - T0))" <<'EOF'
import json, sys
from pathlib import Path
out, rc, took = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
recs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if l.strip()] if (out / "log.jsonl").exists() else []
train = [r for r in recs if r["kind"] == "train"]
val = [r for r in recs if r["kind"] == "val"]
lines = [f"# Device training run (exit {rc}, {took} s in all)", ""]
weights = [p for p in (out / "final.safetensors", out / "latest.safetensors") if p.exists()]
if weights:
    from panini_models.checkpoints import read_weights
    kind, cfg, state, meta = read_weights(weights[0])
    from panini_models.checkpoints import build
    n = sum(p.numel() for p in build(kind, cfg, state, weights[0]).parameters())
    lines.append(f"weights: {weights[0].name}, {weights[0].stat().st_size / 2 ** 20:.1f} MiB, {n / 1e6:.2f} M parameters, "
                 f"{meta.get('trained_steps')} steps, {meta.get('stored_dtype', 'float32')}, "
                 f"{cfg['in_size']} -> {cfg['out_size']} px")
else:
    lines.append("weights: NONE came out")
if train:
    steady = [r for r in train if r["step"] > 20] or train
    st = sorted(r["step_time"] for r in steady)[len(steady) // 2]
    t = train[-1]
    lines += [f"steps: {t['step']}; median step {st * 1e3:.0f} ms ({1 / st:.2f} steps/s, {t['samples_per_s']:.0f} "
              f"samples/s at the last log); data wait at the last log {t['data_time'] * 1e3:.1f} ms",
              "last losses: " + ", ".join(f"{k} {t[k]:.4g}" for k in ("l1", "perceptual", "gan_g", "d_real", "d_fake"))]
for r in recs:
    if r["kind"] == "schedule":
        lines.append(f"schedule fitted at step {r['step']} ({r['elapsed_s']} s): ends at {r['total_steps']}")
if val:
    lines += ["", "| step | val PSNR | bicubic | val SSIM | bicubic | theta |", "|---|---|---|---|---|---|"]
    lines += [f"| {v['step']} | {v['psnr']:.2f} | {v['psnr_bicubic']:.2f} | {v['ssim']:.4f} | {v['ssim_bicubic']:.4f} "
              f"| {v.get('theta', float('nan')):.3f} |" for v in val]
errors = [r for r in recs if r["kind"] == "error"]
lines += [f"ERROR: {r['message']}" for r in errors]
(out / "report.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
    ls -la "$OUT"
    return $rc
}

main 2>&1 | tee "$OUT/device_train.log"
exit "${PIPESTATUS[0]}"
