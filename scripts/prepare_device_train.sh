#!/usr/bin/env bash
# Build .device_train/ (git-ignored) for scripts/device_train.sh and print the device tool's call.
# Run HERE (dlib and ../shared are here, not on the GPU machine):
#
#   bash scripts/prepare_device_train.sh            # packs once (~3.5 min on 2 busy cores), then only measures
#   REPACK=1 bash scripts/prepare_device_train.sh   # pack again (e.g. after benchmarks/heldout_utkface.txt changed)
#   WHEELS="name==version ..." bash scripts/prepare_device_train.sh   # also carry these wheels (cp312)
#
# What goes in:
#   utkface.npz  the UTKFace chips as they are (JPEG bytes) with their 5 FFHQ landmarks, found here with
#                dlib exactly as scripts/align_faces.py finds them; the 300 held-out faces of
#                benchmarks/heldout_utkface.txt left out except faces 100-115 (validation during training;
#                the benchmark uses 0-99, the gate's calibration 150-299). ~46 MiB.
#   wheels/      none by default: the device image has everything the training imports (torch 2.11+cu130,
#                numpy, opencv-python-headless, safetensors, typer, rich, joblib; see
#                /work/.library/device/KINDS.md); dlib is only needed here.
# The device tool sends the working tree too (tracked + untracked-not-ignored files, ~12 MiB, most of it
# models/weights/default.safetensors): 64 MiB in all, checked below.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
DEST=${DEST:-$REPO/.device_train}
SHARED=${PANINI_SHARED:-$REPO/../shared}
PY=${PY:-python3}
LIMIT=$((64 * 1024 * 1024))
MARGIN=$((2 * 1024 * 1024))           # for files others add to the tree before the run

grep -qxF "/.device_train/" .gitignore 2>/dev/null || { mkdir -p .git/info; grep -qxF "/.device_train/" \
    .git/info/exclude 2>/dev/null || echo "/.device_train/" >> .git/info/exclude; }
mkdir -p "$DEST"
if [ ! -s "$DEST/utkface.npz" ] || [ "${REPACK:-0}" = 1 ]; then
    nice "$PY" scripts/pack_trainset.py pack "$SHARED/data/trainset/utkface" "$DEST/utkface.npz" --workers 2
fi
"$PY" - "$DEST/utkface.npz" <<'EOF'
import sys
import numpy as np
with np.load(sys.argv[1], allow_pickle=False) as z:
    split = z["split"]
    held = set(open("benchmarks/heldout_utkface.txt").read().split())
    names = set(z["names"].tolist())
    leak = sorted((names & held) - set(z["names"][split == 1].tolist()))
    print(f"utkface.npz: {len(split)} chips ({int((split == 0).sum())} train, {int(split.sum())} val), "
          f"{len(z['skipped'])} skipped; held-out faces in the training split: {len(leak)}")
    if leak:
        sys.exit("held-out faces would be trained on: REPACK=1")
EOF

if [ -n "${WHEELS:-}" ]; then
    mkdir -p "$DEST/wheels"
    for w in $WHEELS; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$DEST/wheels" "$w"
    done
fi

tree_bytes() {
    git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'
}
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
carry=$(du -sb "$DEST" | cut -f1)
tree=$(tree_bytes)
echo "carry folder $DEST:"
(cd "$DEST" && find . -type f -printf '  %10s  %p\n' | sort -k2)
echo "carry $(mib "$carry") + working tree $(mib "$tree") = $(mib $((carry + tree))) of 64 MiB"
rel=${DEST#"$REPO"/}
echo
echo "device tool call (one call, ~8.5 min of device time plus the machine's start):"
echo "  run(command=\"bash scripts/device_train.sh\", carry=[\"$rel\"], timeout_s=540)"
echo "then: scripts/DEVICE_TRAIN.md (the weights come back as final.safetensors, or latest.safetensors if cut short)"
if [ $((carry + tree + MARGIN)) -gt "$LIMIT" ]; then
    echo "over the 64 MiB the device tool sends (with a $(mib $MARGIN) margin): ignore or remove untracked files" >&2
    exit 2
fi
