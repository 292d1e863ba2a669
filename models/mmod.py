"""dlib's MMOD CNN face detector (`mmod_human_face_detector.dat`, CC0) ported to PyTorch.

Why: dlib's HOG detector misses degraded faces that this network finds, but the dlib
wheel here has no BLAS, so dlib runs it slowly. The same weights in torch run batched on
CPU or CUDA. The file is read by dlib_format.parse_mmod (no pickle, no dlib).

The geometry follows dlib exactly, so detections equal `dlib.cnn_face_detection_model_v1`
(tests/test_mmod.py): the input layer tiles the image pyramid (each level 5/6 of the
previous, bilinear with corner-aligned sampling) into one zero-filled canvas, the net
scores every canvas position, positive scores become the detector window centred on
the position's input point, mapped back through the pyramid level whose tile is nearest,
rounded to integer boxes, sorted by score and thinned by dlib's overlap test.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from .checkpoints import CheckpointError, read_weights
from .dlib_format import ConvSpec, MMODFormatError, MMODSpec, parse_mmod
from .mmod_pyramid import pyramid_layout, tile_pyramid, tile_pyramid_u8

__all__ = ["KIND", "ConvSpec", "box_iou", "MMODDetector", "MMODFormatError", "MMODNet", "MMODSpec", "PRECISIONS",
           "auto_precision", "load_finetuned", "parse_mmod", "pyramid_layout", "relu_bits_", "tile_pyramid",
           "tile_pyramid_u8"]


def _lround(v: np.ndarray) -> np.ndarray:
    """C's lround: halves away from zero (numpy's round goes to even)."""
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


def _nearest_level(rects, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Index of the first tile containing each point, else of the (first) nearest one."""
    r = np.asarray(rects, np.float64)                    # (L, 4)
    dx = np.maximum(r[None, :, 0] - px[:, None], 0) + np.maximum(px[:, None] - r[None, :, 2], 0)
    dy = np.maximum(r[None, :, 1] - py[:, None], 0) + np.maximum(py[:, None] - r[None, :, 3], 0)
    return np.argmin(np.hypot(dx, dy), axis=1)           # inside = distance 0, first wins ties


def dlib_overlaps(a: np.ndarray, b: np.ndarray, iou: float, covered: float) -> np.ndarray:
    """dlib's test_box_overlap on inclusive integer boxes, one box a against many b.

    Note dlib's "IoU" divides by the area of the box spanning both, not of their union.
    """
    def area(x0, y0, x1, y1):
        return np.maximum(x1 - x0 + 1, 0) * np.maximum(y1 - y0 + 1, 0)
    inner = area(np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1]),
                 np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])).astype(np.float64)
    span = area(np.minimum(a[0], b[:, 0]), np.minimum(a[1], b[:, 1]),
                np.maximum(a[2], b[:, 2]), np.maximum(a[3], b[:, 3]))
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = (inner / span > iou) | (inner / area(*a) > covered) | (inner / area(*b.T) > covered)
    return (inner > 0) & hit


def box_iou(boxes: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain IoU of inclusive integer boxes (n, 4) with one box b."""
    w = np.minimum(boxes[:, 2], b[2]) - np.maximum(boxes[:, 0], b[0]) + 1
    h = np.minimum(boxes[:, 3], b[3]) - np.maximum(boxes[:, 1], b[1]) + 1
    inner = np.clip(w, 0, None) * np.clip(h, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0] + 1) * (r[..., 3] - r[..., 1] + 1)
    return inner / (area(boxes) + area(b) - inner)


# ---------------------------------------------------------------- the network
_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def relu_bits_(x: torch.Tensor) -> torch.Tensor:
    """relu in place through the sign bit: read as an integer of the same width, a negative
    float is negative, so clamping the integer at 0 gives +0.0 (equal to torch.relu_ but
    for negative NaNs). torch's bf16 relu_ on CPU is ~5x slower than this."""
    if x.dtype in _SAME_WIDTH_INT:
        x.view(_SAME_WIDTH_INT[x.dtype]).clamp_min_(0)
        return x
    return torch.relu_(x)


class MMODNet(torch.nn.Module):
    """The conv stack (affine and relu folded in); one score map per detector window.

    With `raw_input`, the input normalisation (x - mean) / 256 is folded into the first
    conv, so it takes raw 0-255 values (tile_pyramid_u8's canvas). That is exact because
    the first conv has no padding: every input it sees is a canvas pixel.
    """

    def __init__(self, spec: MMODSpec, raw_input: bool = False):
        super().__init__()
        self.spec, self.raw_input = spec, raw_input
        self.convs = torch.nn.ModuleList()
        for i, c in enumerate(spec.convs):
            conv = torch.nn.Conv2d(c.weight.shape[1], c.weight.shape[0], c.weight.shape[2:], c.stride, c.padding)
            weight, bias = torch.from_numpy(c.weight).double(), torch.from_numpy(c.bias).double()
            if raw_input and i == 0:
                if c.padding != (0, 0):
                    raise ValueError("raw_input needs an unpadded first conv")
                mean = torch.tensor(spec.mean_rgb, dtype=torch.float64)
                bias = bias - (weight * mean[None, :, None, None]).sum((1, 2, 3)) / 256.0
                weight = weight / 256.0
            with torch.no_grad():
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
            self.convs.append(conv.requires_grad_(False).to(memory_format=torch.channels_last))

    def sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """Valid (h, w) of the input of each conv, then of the output."""
        out = [(h, w)]
        for c in self.convs:
            (kh, kw), (sh, sw), (ph, pw) = c.kernel_size, c.stride, c.padding
            h, w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            out.append((h, w))
        return out

    def output_to_input(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canvas point of each output position (dlib's map_output_to_input, top layer first)."""
        x, y = col.astype(np.float64), row.astype(np.float64)
        for c in reversed(self.convs):
            x = x * c.stride[1] - c.padding[1] + c.kernel_size[1] // 2
            y = y * c.stride[0] - c.padding[0] + c.kernel_size[0] // 2
        return x, y

    def forward(self, x: torch.Tensor, valid: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """Score maps of a batch of canvases. `valid` gives each sample's own canvas size when
        they were padded to one batch: activations outside it are zeroed before every padded
        conv, so each sample sees dlib's zero padding at its own border (batched = one by one)."""
        per_sample = [self.sizes(*hw) for hw in valid] if valid else None
        x = x.contiguous(memory_format=torch.channels_last)   # 1.5x faster convs on CPU (oneDNN)
        for i, conv in enumerate(self.convs):
            if per_sample and conv.padding != (0, 0) and any(s[i] != tuple(x.shape[2:]) for s in per_sample):
                rows = torch.arange(x.shape[2], device=x.device)
                cols = torch.arange(x.shape[3], device=x.device)
                hw = torch.tensor([s[i] for s in per_sample], device=x.device)
                mask = (rows[None, :, None] < hw[:, 0, None, None]) & (cols[None, None, :] < hw[:, 1, None, None])
                x = (x * mask[:, None].to(x.dtype)).contiguous(memory_format=torch.channels_last)
            x = conv(x)
            if self.spec.convs[i].relu:
                x = torch.relu(x) if x.requires_grad else relu_bits_(x)     # in place breaks autograd
        return x


# ---------------------------------------------------------------- fine-tuned weights
KIND = "mmod"          # the kind our safetensors files of this network carry (mmod_finetune)


def load_finetuned(spec: MMODSpec, path) -> MMODSpec:
    """A copy of dlib's spec (geometry, windows, NMS) with the convs of our weight file."""
    kind, _, sd, _ = read_weights(path)
    if kind != KIND:
        raise CheckpointError(path, f"holds a {kind!r} model, not a face detector ({KIND!r})")
    spec = copy.deepcopy(spec)
    for i, c in enumerate(spec.convs):
        for name in ("weight", "bias"):
            t = sd.get(f"convs.{i}.{name}")
            ref = getattr(c, name)
            if t is None or tuple(t.shape) != ref.shape:
                raise CheckpointError(path, f"convs.{i}.{name} missing or not of shape {ref.shape}")
            setattr(c, name, t.numpy().astype(ref.dtype))
    return spec


# ---------------------------------------------------------------- detection
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def auto_precision(device: torch.device) -> str:
    """'bf16' on a CPU with AMX tiles (oneDNN's bf16 convs there run ~4x fp32, measured in
    benchmarks/detect.py), else 'fp32': without AMX, bf16 convs are emulated and slower.
    CUDA stays fp32 until bf16 is measured there."""
    if device.type != "cpu":
        return "fp32"
    try:
        return "bf16" if torch.cpu._is_amx_tile_supported() else "fp32"
    except AttributeError:                                # a torch without the probe
        return "fp32"


class MMODDetector:
    """dlib's `cnn_face_detection_model_v1(path)(rgb, 0)` in torch, for many images at once.

    Returns per image an (n, 5) float64 array: left, top, right, bottom (dlib's inclusive
    integer box) and score, best first. All pyramid levels of an image go through the net
    in one canvas; canvases of several images are padded into one batch (`max_batch_pixels`
    bounds its size). `pyramid` replaces dlib's pyramid_down<6> by pyramid_down<N>: a
    coarser pyramid (N < 6) is faster and no longer dlib's exact detector. `precision`
    'fp32' is dlib's arithmetic (the reference pyramid, tile_pyramid); 'bf16' is the fast
    path: the pyramid drawn in uint8 (tile_pyramid_u8, normalisation folded into the
    first conv) and the convs in bfloat16, ~5x faster on CPUs with AMX, scores within
    ~0.05 of fp32; 'auto' picks bf16 only where the CPU has AMX (see `auto_precision`).
    `weights`: our safetensors file of fine-tuned convs (mmod_finetune) to use in place
    of the file's own; everything else (windows, pyramid, NMS) stays the file's.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", max_batch_pixels: int = 12_000_000,
                 pyramid: int | None = None, precision: str = "fp32", weights: str | Path | None = None):
        self.spec = parse_mmod(path)
        if weights is not None:
            self.spec = load_finetuned(self.spec, weights)
        if pyramid is not None:
            if pyramid < 2:
                raise ValueError("pyramid must be >= 2")
            self.spec.pyramid_n = pyramid
        self.device = torch.device(device)
        if precision == "auto":
            precision = auto_precision(self.device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)} or 'auto', not {precision!r}")
        self.precision, self.dtype = precision, PRECISIONS[precision]
        self.fast = self.precision == "bf16"
        self.net = MMODNet(self.spec, raw_input=self.fast).to(self.device, self.dtype).eval()
        self.max_batch_pixels = max_batch_pixels

    def layout(self, h: int, w: int):
        s = self.spec
        return pyramid_layout(h, w, s.pyramid_n, s.pyramid_padding, s.pyramid_outer_padding)

    @torch.inference_mode()
    def __call__(self, images_rgb: list[np.ndarray], threshold: float = 0.0, nms: bool = True) -> list[np.ndarray]:
        """(n, 5) detections per image; nms=False: every position above `threshold`, unsorted
        and not thinned (what a score near a given box needs)."""
        mean_raw = torch.tensor(self.spec.mean_rgb, dtype=torch.float32, device=self.device)
        mean = mean_raw[:, None, None]
        layouts = [self.layout(*im.shape[:2]) for im in images_rgb]
        results: list[np.ndarray | None] = [None] * len(images_rgb)
        for i, (_, ch, cw) in enumerate(layouts):
            if min(self.net.sizes(ch, cw)[-1]) <= 0:     # too small for the net to score anything
                results[i] = np.zeros((0, 5))
        order = sorted((i for i in range(len(images_rgb)) if results[i] is None),
                       key=lambda i: (layouts[i][1] * layouts[i][2], images_rgb[i].shape))
        while order:
            batch = [order.pop(0)]
            while order:
                hs, ws = zip(*((layouts[i][1], layouts[i][2]) for i in batch + order[:1]))
                if (len(batch) + 1) * max(hs) * max(ws) > self.max_batch_pixels:
                    break
                batch.append(order.pop(0))
            H, W = max(layouts[i][1] for i in batch), max(layouts[i][2] for i in batch)
            # channels-last from the start (what the convs want); same-size images, adjacent
            # in the order, share one pyramid computation and are drawn in place
            if self.fast:
                nhwc = torch.empty(len(batch), H, W, 3, device=self.device, dtype=self.dtype)
                x = nhwc.permute(0, 3, 1, 2)
            else:
                x = torch.empty(len(batch), 3, H, W, device=self.device, dtype=self.dtype,
                                memory_format=torch.channels_last).zero_()
            j0 = 0
            while j0 < len(batch):
                j1 = j0 + 1
                while j1 < len(batch) and images_rgb[batch[j1]].shape == images_rgb[batch[j0]].shape:
                    j1 += 1
                img = torch.from_numpy(np.stack([images_rgb[i] for i in batch[j0:j1]])).to(self.device)
                rects, ch, cw = layouts[batch[j0]]
                if self.fast:
                    tile_pyramid_u8(img, rects, nhwc[j0:j1], mean_raw)
                else:
                    img = (img.permute(0, 3, 1, 2).contiguous().float() - mean) / 256.0   # NCHW: 3x faster resizes
                    tile_pyramid(img, rects, (ch, cw), out=x[j0:j1, :, :ch, :cw])
                j0 = j1
            valid = [layouts[i][1:] for i in batch]
            scores = self.net(x, valid if len(batch) > 1 else None).float().cpu().numpy()
            for j, i in enumerate(batch):
                oh, ow = self.net.sizes(*valid[j])[-1]
                if nms:
                    results[i] = self.decode(scores[j, :, :oh, :ow], layouts[i][0], threshold)
                else:
                    box, sc = self.candidates(scores[j, :, :oh, :ow], layouts[i][0], threshold)
                    results[i] = np.column_stack([box.astype(np.float64), sc])
        return results

    def decode(self, scores: np.ndarray, rects, threshold: float = 0.0) -> np.ndarray:
        """Score maps (K, h, w) of one canvas -> boxes in the image after dlib's NMS."""
        box, s = self.candidates(scores, rects, threshold)
        kept: list[int] = []
        for i in np.argsort(-s, kind="stable"):
            if kept and dlib_overlaps(box[i], box[kept], self.spec.nms_iou, self.spec.nms_covered).any():
                continue
            kept.append(i)
        return np.column_stack([box[kept].astype(np.float64), s[kept]]) if kept else np.zeros((0, 5))

    def candidates(self, scores: np.ndarray, rects, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Every position scoring above `threshold`: (n, 4) integer boxes in the image, (n,) scores."""
        k, row, col = np.nonzero(scores > threshold)
        s = scores[k, row, col].astype(np.float64)
        px, py = self.net.output_to_input(col, row)
        win = np.array([w[:2] for w in self.spec.windows], np.float64)[k]
        half = (win - 1) / 2                             # centered_drect(p, w, h)
        box = np.stack([px - half[:, 0], py - half[:, 1], px + half[:, 0], py + half[:, 1]], 1)
        cx = np.floor((box[:, 0] + box[:, 2]) / 2 + 0.5)
        cy = np.floor((box[:, 1] + box[:, 3]) / 2 + 0.5)
        level = _nearest_level(rects, cx, cy)
        box -= np.asarray(rects, np.float64)[level][:, [0, 1, 0, 1]]
        n = self.spec.pyramid_n
        for step in range(1, int(level.max(initial=0)) + 1):
            up = level >= step                           # point_up once per level down
            box[up] = box[up] * (n / (n - 1.0)) + 0.3
        return _lround(box), s
