"""Reader for dlib's serialization format, enough for its MMOD detector network files.

Why: the detector's weights ship only as dlib's `.dat` (face-recognition-models,
mmod_human_face_detector.dat, CC0). Reading it with struct-level code of our own means
nothing is unpickled and no dlib is needed to load it. The format (dlib/serialize.h and
the layers' serialize functions): integers as a control byte (byte count, sign bit) and
little-endian bytes; floats as integer mantissa and exponent; strings as length + bytes;
bools as '0'/'1'; tensors as four sizes and raw float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class MMODFormatError(ValueError):
    """The file is not a dlib MMOD network this module understands."""


class _Reader:
    """dlib's serialize.h primitives over a byte string."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MMODFormatError(f"file ends at byte {len(self.data)}, wanted {n} more at {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        """Control byte (low nibble: byte count, 0x80: negative), then little-endian magnitude."""
        ctrl = self.take(1)[0]
        size = ctrl & 0x0F
        if size == 0 or size > 8:
            raise MMODFormatError(f"bad integer control byte 0x{ctrl:02x} at {self.pos - 1}")
        value = int.from_bytes(self.take(size), "little")
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        """float_details: integer mantissa and exponent; exponents 32000-32002 mark inf, -inf, nan."""
        mantissa, exponent = self.int(), self.int()
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            raise MMODFormatError(f"bad bool {ch!r} at {self.pos - 1}")
        return ch == b"1"

    def string(self) -> str:
        return self.take(self.int()).decode("latin-1")

    def peek_string(self) -> str | None:
        """The string starting here, or None when the bytes here cannot be one."""
        pos = self.pos
        try:
            n = self.int()
            return self.take(n).decode("latin-1") if 0 < n < 64 else None
        except MMODFormatError:
            return None
        finally:
            self.pos = pos

    def tensor(self) -> np.ndarray:
        """resizable_tensor version 2: four sizes, then float32 values."""
        if self.int() != 2:
            raise MMODFormatError("unsupported tensor version")
        shape = tuple(self.int() for _ in range(4))
        n = int(np.prod(shape))
        return np.frombuffer(self.take(4 * n), "<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise MMODFormatError("unsupported alias_tensor version")
        return tuple(self.int() for _ in range(4))


@dataclass
class ConvSpec:
    """One conv with what followed it folded in: affine (scale, shift) and relu."""
    weight: np.ndarray          # (out, in, kh, kw), cross-correlation as in cuDNN
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    relu: bool = False


@dataclass
class MMODSpec:
    """Everything the network file says: input normalisation, pyramid padding, layers, loss."""
    mean_rgb: tuple[float, float, float]
    pyramid_padding: int
    pyramid_outer_padding: int
    convs: list[ConvSpec]
    windows: list[tuple[int, int, str]]      # detector windows: width, height, label
    nms_iou: float
    nms_covered: float
    pyramid_n: int = 6                       # pyramid_down<6>: a template argument, not in the file
    layer_names: list[str] = field(default_factory=list)


def _read_options(r: _Reader) -> tuple[list, float, float]:
    version = r.int()
    if not 1 <= version <= 4:
        raise MMODFormatError(f"unsupported mmod_options version {version}")
    if version == 1:
        windows = [(r.int(), r.int(), "")]
    else:
        windows = []
        for _ in range(r.int()):
            wv = r.int()
            w, h = r.int(), r.int()
            windows.append((w, h, r.string() if wv == 2 else ""))
    r.float(), r.float(), r.float()                      # loss per false alarm / miss, match IoU
    nms_iou, nms_covered = r.float(), r.float()
    r.float(), r.float()                                 # overlaps_ignore
    if version >= 3:
        r.take(1)                                        # assume_image_pyramid (uint8)
    if version >= 4 and r.bool():
        raise MMODFormatError("bounding-box regression models are not supported")
    if version >= 4:
        r.float()
    return windows, nms_iou, nms_covered


def _read_details(r: _Reader) -> tuple[str, object]:
    """One layer's parameters: ('con', ConvSpec) / ('affine', (gamma, beta)) / ('relu', True);
    None for a disabled layer."""
    name = r.string()
    if name in ("con_4", "con_5", "con_6"):
        params = r.tensor().ravel()
        n_filters, kh, kw = r.int(), r.int(), r.int()
        stride, padding = (r.int(), r.int()), (r.int(), r.int())
        shape = r.alias_tensor()
        r.alias_tensor()                                 # biases: (1, n_filters)
        for _ in range(4):
            r.float()                                    # learning-rate / weight-decay multipliers
        use_bias = r.bool() if name != "con_4" else True
        use_relu = r.bool() if name == "con_6" else False
        n_w = int(np.prod(shape))
        if shape[0] != n_filters or shape[2:] != (kh, kw) or params.size != n_w + n_filters * use_bias:
            raise MMODFormatError("con_ parameter sizes do not match its shape")
        bias = params[n_w:] if use_bias else np.zeros(n_filters, np.float32)
        return "con", ConvSpec(params[:n_w].reshape(shape).copy(), bias.copy(), stride, padding, use_relu)
    if name in ("affine_", "affine_2"):
        params = r.tensor().ravel()
        r.alias_tensor(), r.alias_tensor()
        mode = r.int()
        disabled = r.bool() if name == "affine_2" else False
        if mode != 1 and not disabled:                  # 1 = CONV_MODE: one scale per channel
            raise MMODFormatError("only per-channel affine layers are supported")
        k = params.size // 2
        return "affine", None if disabled else (params[:k].copy(), params[k:].copy())
    if name == "bn_con2":                                # batch norm, read as dlib reads it: an affine
        params = r.tensor().ravel()
        r.alias_tensor(), r.alias_tensor()
        r.tensor(), r.tensor()                           # batch means / inverse stds (training only)
        run_mean, run_var = r.tensor().ravel(), r.tensor().ravel()
        r.int(), r.int()                                 # update count, running-stats window
        for _ in range(4):
            r.float()
        eps = r.float()
        k = params.size // 2
        gamma = params[:k] / np.sqrt(run_var + eps)
        return "affine", (gamma.astype(np.float32), (params[k:] - gamma * run_mean).astype(np.float32))
    if name in ("relu_", "relu_2"):
        disabled = r.bool() if name == "relu_2" else False
        return "relu", None if disabled else True
    raise MMODFormatError(f"unsupported layer {name!r}")


def parse_mmod(path: str | Path) -> MMODSpec:
    """Read a dlib `loss_mmod<...<input_rgb_image_pyramid<pyramid_down<6>>>>` network file."""
    r = _Reader(Path(path).read_bytes())
    if r.int() != 1 or r.string() != "loss_mmod_":
        raise MMODFormatError(f"{path} is not a dlib loss_mmod network")
    windows, nms_iou, nms_covered = _read_options(r)
    # add_layer<L, SUB> writes its version, then SUB, then L: so the versions of all layers
    # come first (outermost first), down to the one whose subnet is the input layer.
    versions = []
    while (s := r.peek_string()) is None or not s.startswith("input_"):
        versions.append(r.int())
        if len(versions) > 1000:
            raise MMODFormatError("no input layer found")
    name = r.string()
    if name not in ("input_rgb_image_pyramid", "input_rgb_image_pyramid2"):
        raise MMODFormatError(f"unsupported input layer {name!r}")
    mean = (r.float(), r.float(), r.float())
    pad, outer = (r.int(), r.int()) if name.endswith("2") else (10, 11)
    layers = []
    for i, version in enumerate(reversed(versions)):     # innermost (first applied) first
        layers.append(_read_details(r))
        r.bool(), r.bool(), r.bool()                     # setup called, gradient stale, disabled
        r.tensor(), r.tensor()                           # x_grad, cached output
        if i == 0:
            r.tensor()                                   # grad_final
            if version >= 3:
                r.int()                                  # sample expansion factor
        elif version == 2:
            r.tensor()                                   # params_grad
    if r.pos != len(r.data):
        raise MMODFormatError(f"{len(r.data) - r.pos} bytes left after the network")
    convs: list[ConvSpec] = []
    for kind, item in layers:
        if kind == "con":
            convs.append(item)
        elif item is None:
            continue
        elif not convs or convs[-1].relu:
            raise MMODFormatError(f"{kind} layer that does not follow a conv")
        elif kind == "affine":
            g, b = item
            c = convs[-1]
            c.weight, c.bias = c.weight * g[:, None, None, None], c.bias * g + b
        else:
            convs[-1].relu = True
    if convs[-1].weight.shape[0] != len(windows):
        raise MMODFormatError("the last conv must give one score map per detector window")
    return MMODSpec(mean, pad, outer, convs, windows, nms_iou, nms_covered,
                    layer_names=[k for k, _ in layers])
