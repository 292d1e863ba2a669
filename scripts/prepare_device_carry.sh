#!/usr/bin/env bash
# Fill .device_carry/ (git-ignored) with what scripts/device_check.sh needs on the GPU machine and
# print the device tool's `carry` list. Run HERE, from the repo or anywhere; PyPI must be reachable.
#
#   scripts/prepare_device_carry.sh                   # for the device's Python 3.12
#   PYTHON_VERSION=3.11 DEST=/tmp/dry_carry scripts/prepare_device_carry.sh     # a CPU dry run here
#
# The device (see /work/.library/device/KINDS.md) has torch 2.11+cu130, numpy, opencv-python-headless,
# typer, rich, joblib, safetensors and pytest; it reaches no registry. What goes in:
#   wheels/     dlib-bin 20.0.1.post1 for cp$PYTHON_VERSION (~4 MB): pip install --target there.
#   site/       imageio-ffmpeg 0.7.0's Python package without its ffmpeg binary, which travels as
#   blobs/      blobs/ffmpeg-linux-x86_64-v7.0.2.xz (80 MB -> 21 MB); device_check.sh puts it back.
#               Not 0.5.1: it ships ffmpeg 4.2.2, which has no -fps_mode (panini_cli uses it); not
#               0.6.0 (same ffmpeg): its write_frames refuses a Fraction fps, which panini passes;
#               0.8.x: 68 MB.
#               blobs/frm/*.xz: face-recognition-models' files that panini_cli reads (the CC0 5-point
#               landmarks always; the recognition ResNet, 22 MB, and the MMOD detector when the code
#               names them). The 68-point file (100 MB) cannot travel: the device checks use --landmarks 5.
#   shared/     what the CUDA tests and benchmarks read of ../shared: reference/keys_{mfr,sr}.json
#               (the recipe of the official weights), data/video/keep_real_3.mp4 (a face throughout)
#               and, budget allowing, four whole photos. golden_mfr.npz (12 MB) does not fit: the
#               device compares CUDA with its own CPU forward, which tests/test_golden.py proves golden.
# The tool sends the working tree too (tracked + untracked-not-ignored files): 64 MiB in all. Optional
# items are dropped (and said) until the total fits; it fails when the required ones do not.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=${DEST:-$REPO/.device_carry}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
SHARED=${PANINI_SHARED:-$REPO/../shared}
PY=${PY:-python3}
LIMIT=$((63 * 1024 * 1024))          # 64 MiB less a margin for files others add before the run
FFMPEG=ffmpeg-linux-x86_64-v7.0.2

mkdir -p "$DEST/wheels" "$DEST/site" "$DEST/blobs/frm" "$DEST/shared/reference" "$DEST/shared/data/video" \
         "$DEST/shared/data/whole_photos"
rm -f "$DEST"/wheels/*.whl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pip_download() {
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 \
        -d "$1" "$2" 2>&1 | grep -v "is ignored" || true
}
pip_download "$DEST/wheels" "dlib-bin==20.0.1.post1"
ls "$DEST"/wheels/dlib_bin-*.whl >/dev/null

IIO=0.7.0
if [ ! -s "$DEST/blobs/$FFMPEG.xz" ] || [ ! -d "$DEST/site/imageio_ffmpeg-$IIO.dist-info" ]; then
    pip_download "$tmp" "imageio-ffmpeg==$IIO"
    rm -rf "$DEST/site/imageio_ffmpeg" "$DEST"/site/imageio_ffmpeg-*.dist-info
    (cd "$DEST/site" && unzip -q -o "$tmp"/imageio_ffmpeg-$IIO-*.whl)
    mv "$DEST/site/imageio_ffmpeg/binaries/$FFMPEG" "$tmp/$FFMPEG"
    if [ ! -s "$DEST/blobs/$FFMPEG.xz" ]; then
        nice xz -9 -T2 -c "$tmp/$FFMPEG" > "$DEST/blobs/$FFMPEG.xz.part" && mv "$DEST/blobs/$FFMPEG.xz.part" "$DEST/blobs/$FFMPEG.xz"
    fi
fi

# face-recognition-models: from this machine's install, else from its sdist (only the files needed)
frm_dir=$("$PY" -c "import importlib.util as u; s=u.find_spec('face_recognition_models'); \
print(list(s.submodule_search_locations)[0] + '/models' if s else '')" 2>/dev/null || true)
frm_file() {     # NAME: blobs/frm/NAME.xz
    local name=$1
    [ -s "$DEST/blobs/frm/$name.xz" ] && return
    local src="$frm_dir/$name"
    if [ -z "$frm_dir" ] || [ ! -s "$src" ]; then
        [ -s "$tmp"/face_recognition_models-0.3.0.tar.gz ] || \
            "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "face-recognition-models==0.3.0"
        tar -xzf "$tmp"/face_recognition_models-0.3.0.tar.gz -C "$tmp" --wildcards "*/models/$name"
        src="$tmp/face_recognition_models-0.3.0/face_recognition_models/models/$name"
    fi
    nice xz -9 -T2 -c "$src" > "$DEST/blobs/frm/$name.xz.part" && mv "$DEST/blobs/frm/$name.xz.part" "$DEST/blobs/frm/$name.xz"
}
frm_file shape_predictor_5_face_landmarks.dat
for name in dlib_face_recognition_resnet_model_v1.dat mmod_human_face_detector.dat; do
    if grep -rqs "${name%.dat}" "$REPO/panini_cli" "$REPO/models"; then
        frm_file "$name"
    else
        rm -f "$DEST/blobs/frm/$name.xz"
    fi
done

for f in reference/keys_mfr.json reference/keys_sr.json data/video/keep_real_3.mp4 \
         data/whole_photos/facerec_obama_1080p.jpg data/whole_photos/facerec_two_people.jpg \
         data/whole_photos/gpen_Solvay_conference_1927.png data/whole_photos/deepface_selfie_many_people.jpg; do
    if [ -f "$SHARED/$f" ]; then
        cp "$SHARED/$f" "$DEST/shared/$f"
    else
        echo "note: $SHARED/$f not found; what reads it will skip or fall back" >&2
    fi
done

tree_bytes() {
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
}
total() { echo $(( $(du -sb "$DEST" | cut -f1) + $(tree_bytes) )); }
# optional, dropped in this order while over the limit: first the recognition ResNet (20 MB;
# no device check needs identity), then the photos benchmarks/detect.py times (it needs one).
# Never the MMOD file: the default detector, `cnn`, needs it, and it is 0.7 MB.
for f in blobs/frm/dlib_face_recognition_resnet_model_v1.dat.xz \
         shared/data/whole_photos/gpen_Solvay_conference_1927.png shared/data/whole_photos/facerec_two_people.jpg \
         shared/data/whole_photos/facerec_obama_1080p.jpg shared/data/whole_photos/deepface_selfie_many_people.jpg \
         shared/data/video/keep_real_3.mp4; do
    [ "$(total)" -le "$LIMIT" ] && break
    if [ -e "$DEST/$f" ]; then
        rm -f "$DEST/$f"
        echo "dropped to fit the 64 MiB: $f" >&2
    fi
done

mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
carry=$(du -sb "$DEST" | cut -f1)
tree=$(tree_bytes)
echo "carry folder: $DEST"
(cd "$DEST" && find . -type f -size +100k -printf '  %10s  %p\n' | sort -k2)
echo "  (+ $(cd "$DEST" && find . -type f -size -101k | wc -l) small files)"
echo "largest files of the working tree that travels:"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c '  %10s  %n' | sort -rn | head -5)
echo "carry $(mib "$carry") + working tree $(mib "$tree") = $(mib $((carry + tree))) of 64 MiB"
rel=${DEST#"$REPO"/}
echo "device tool carry list: [\"$rel\"]"
echo "device command: bash scripts/device_check.sh     (timeout_s 420: it ends itself within 5 min)"
if [ $((carry + tree)) -gt $((64 * 1024 * 1024)) ]; then
    echo "over the 64 MiB the device tool sends: ignore or remove untracked files first" >&2
    exit 2
fi
