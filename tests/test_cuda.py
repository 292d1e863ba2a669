"""The CUDA paths of panini: forward equality with the CPU and the low precisions, the CLI on a
GPU (--gpu, --gpus, --precision, the batch size from free memory, every variant), torchrun with
NCCL, AMP training killed and resumed, `video --gpus`.

Every test is marked `cuda` and skips where torch.cuda.is_available() is False.
scripts/device_check.sh runs them on a GPU machine. PANINI_CUDA_DRY_RUN=1 runs the CPU analogue of
each instead (same code, device cpu; checks that only CUDA has still skip): it proves the test
code before device time is spent, and nothing about CUDA. Measured numbers (errors at each
precision, the TF32 error, the batch plan) are printed and, with PANINI_CUDA_REPORT=FILE, kept in
that JSON file for the device report. Whole photos use --landmarks 5: the 68-point file does not
travel to the device machine.
"""
import contextlib
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import official
from conftest import REFERENCE, REPO, need
from panini_cli.app import app
from trainhelpers import TINY, _run_cli, faces, restore_cfg, sigterm_after_steps, train_records
from videoclips import need_clip, summary_of, yuv_frames
from videoclips import run as run_video

HAVE_CUDA = torch.cuda.is_available()
DRY = os.environ.get("PANINI_CUDA_DRY_RUN") == "1" and not HAVE_CUDA
DEV = "cuda:0" if HAVE_CUDA else "cpu"
EXAMPLES = REPO / "examples"
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not (HAVE_CUDA or DRY), reason="needs CUDA: torch.cuda.is_available() is False on this machine "
    "(scripts/device_check.sh runs these on a GPU machine; PANINI_CUDA_DRY_RUN=1 runs their CPU analogue)")]

# Golden tolerances of tests/test_golden.py, for fp32 with TF32 off.
GOLDEN = {"image": 1e-4, "masks": 1e-5, "theta": 1e-5, "vdr": 1e-4, "latent": 1e-4}
# Autocast against fp32, about 3x what the CPU's bf16/fp16 autocast gave on the recipe weights
# (MFR bf16: rel_l2 1.1e-2, max 0.016, 0.32 levels; fp16: rel_l2 9.9e-4, max 1.8e-3, 0.03 levels;
# SR bf16: rel_l2 1.4e-2, max 0.025, 0.72 levels; fp16: rel_l2 9.7e-4, max 2.3e-3, 0.05 levels).
LOW = {"bf16": {"rel_l2": 4e-2, "max_abs": 0.1, "theta": 1e-2, "levels": 2.0},
       "fp16": {"rel_l2": 4e-3, "max_abs": 0.02, "theta": 2e-3, "levels": 0.3}}
# Pictures compared across devices: every face restored as the model made it (the do-no-harm check
# and the colour match would otherwise decide per face, and a marginal face may go either way).
AS_MADE = ["--force", "--no-color-match"]
runner = CliRunner()


def cuda_only(what: str) -> None:
    if not HAVE_CUDA:
        pytest.skip(f"dry run on the CPU: this checks {what}, which needs CUDA")


def record(name: str, **values) -> None:
    """Print a measured number and keep it in $PANINI_CUDA_REPORT (JSON) for the device report."""
    print(f"[cuda-report] {name}: {json.dumps(values, default=str)}")
    path = os.environ.get("PANINI_CUDA_REPORT")
    if path:
        p = Path(path)
        data = json.loads(p.read_text()) if p.exists() else {}
        data[name] = values
        p.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))


@contextlib.contextmanager
def tf32(on: bool):
    """TF32 for CUDA matmuls and cuDNN convolutions on or off (PyTorch's defaults: off and on)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def errors(out, ref) -> dict:
    a, b = torch.as_tensor(out).detach().double().cpu(), torch.as_tensor(ref).detach().double().cpu()
    d = a - b
    return {"finite": bool(torch.isfinite(a).all()), "max_abs": float(d.abs().max()),
            "mean_abs": float(d.abs().mean()), "rel_l2": float(d.norm() / b.norm().clamp_min(1e-30))}


def levels(a: list, b: list) -> float:
    """Mean absolute difference of two lists of uint8 images, in 8-bit levels."""
    return float(np.mean([np.abs(x.astype(np.int16) - y.astype(np.int16)).mean() for x, y in zip(a, b)]))


@lru_cache(maxsize=None)
def example_faces(size: int) -> tuple:
    """Every face of examples/ as an FFHQ-aligned uint8 BGR crop (dlib 5-point), size x size."""
    from panini_cli.faces import DlibDetector, align_face

    det = DlibDetector("5")
    crops = []
    for p in sorted(EXAMPLES.glob("*.jpg")):
        img = cv2.imread(str(p))
        crops += [align_face(img, f, size)[0] for f in det.detect(img)]
    assert len(crops) >= 4, f"expected faces in {EXAMPLES}"
    return tuple(crops)


def write_crops(folder: Path, size: int, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(example_faces(size)[:n]):
        cv2.imwrite(str(folder / f"face_{i:02d}.png"), crop)
    return folder


def variant_file(folder: Path, variant: str, seed: int = 0) -> Path:
    """A Panini-Net of PRESETS[variant] with random weights, as our safetensors file."""
    from panini_models.checkpoints import save_weights
    from panini_models.panini import PRESETS, PaniniNet

    path = folder / f"{variant}.safetensors"
    if not path.exists():
        torch.manual_seed(seed)
        m = PaniniNet(PRESETS[variant])
        save_weights(path, m.state_dict(), "panini", json.loads(m.config.to_json()))
    return path


def restore_cli(*args):
    res = runner.invoke(app, ["restore", "-q", "--json", *map(str, args)])
    assert res.exit_code == 0, res.output
    summary = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
    return summary, res.output


def manifest(out: Path) -> list:
    return [json.loads(line) for f in sorted(out.glob("manifest*.jsonl")) for line in f.read_text().splitlines()]


def images_of(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            for p in sorted(folder.rglob("*.png"))}


def gpu_flag() -> list:
    """--gpu 0 on CUDA; the dry run's CPU analogue."""
    return ["--gpu", "0"] if HAVE_CUDA else ["--device", "cpu"]


def gpus_flag(value: str = "0") -> list:
    return ["--gpus", value] if HAVE_CUDA else ["--device", "cpu"]


# ---------------------------------------------------------------- forward: fp32, TF32, bf16, fp16
@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """The official layouts' weight recipe (../shared/reference), imported as the CLI imports it."""
    from panini_models import checkpoints

    cache = {}

    def get(variant: str):
        if variant not in cache:
            need(REFERENCE / f"keys_{variant}.json")
            path = official.write_restorer_file(variant, tmp_path_factory.mktemp(variant) / f"{variant}.pth")
            cache[variant] = checkpoints.import_file(path)
        imported = cache[variant]
        return checkpoints.build(imported.kind, imported.config, imported.state_dict), imported.config
    return get


@lru_cache(maxsize=None)
def _input(size: int, batch: int) -> torch.Tensor:
    from panini_models.tensors import bgr_to_tensor
    return bgr_to_tensor(list(example_faces(size)[:batch]))


_cpu_refs: dict = {}


def cpu_reference(recipe, variant: str, batch: int):
    """The CPU forward (runtime.prepare: channels_last, fused oneDNN convs), the path that
    tests/test_golden.py proves within 2.4e-7 of the official implementation."""
    from panini_models import runtime

    key = (variant, batch)
    if key not in _cpu_refs:
        model, cfg = recipe(variant)
        _cpu_refs[key] = runtime.forward(runtime.prepare(model, "cpu", "fp32"), _input(cfg["in_size"], batch),
                                         return_aux=True)
    return _cpu_refs[key]


def _aux_errors(out, ref) -> dict:
    e = {"image": errors(out.image, ref.image)}
    if ref.mask_gan:
        e["masks"] = max(errors(torch.stack(out.mask_gan, 1), torch.stack(ref.mask_gan, 1))["max_abs"],
                         errors(torch.stack(out.mask_img, 1), torch.stack(ref.mask_img, 1))["max_abs"])
        e["theta"] = errors(out.thetas, ref.thetas)["max_abs"]
    if ref.vdr is not None:
        e["vdr"] = errors(out.vdr, ref.vdr)["max_abs"]
    e["latent"] = errors(out.latent, ref.latent)["max_abs"]
    return e


@pytest.mark.parametrize("variant,batch,channels_last", [("mfr", 1, True), ("mfr", 2, True), ("mfr", 1, False),
                                                         ("sr", 1, True)])
def test_fp32_forward_matches_the_cpu_with_tf32_off(recipe, variant, batch, channels_last):
    """Batch 1 runs the fused modulated conv, batch 2 the batched one; NCHW as well as NHWC."""
    from panini_models import runtime

    ref = cpu_reference(recipe, variant, batch)
    model, cfg = recipe(variant)
    model = runtime.prepare(model, DEV, "fp32", channels_last=channels_last)
    with tf32(False):
        out = runtime.forward(model, _input(cfg["in_size"], batch), return_aux=True)
    assert out.image.device.type == torch.device(DEV).type
    e = _aux_errors(out, ref)
    record(f"fp32_vs_cpu/{variant}/b{batch}/{'nhwc' if channels_last else 'nchw'}", **e)
    assert e["image"]["finite"]
    assert e["image"]["max_abs"] <= GOLDEN["image"], e
    for k in ("masks", "theta", "vdr", "latent"):
        if k in e:
            assert e[k] <= GOLDEN[k], (k, e)


def test_tf32_error_is_measured(recipe):
    """What `--precision fp32` gets on CUDA by default: PyTorch runs cuDNN convolutions in TF32
    (torch.backends.cudnn.allow_tf32 is True unless set). Reported against the CPU; bounded at
    the level of fp16 autocast, which has TF32's 10-bit mantissa."""
    cuda_only("TF32")
    from panini_models import runtime

    ref = cpu_reference(recipe, "mfr", 1)
    model = runtime.prepare(recipe("mfr")[0], DEV, "fp32")
    defaults = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    out_default = runtime.forward(model, _input(512, 1), return_aux=True)
    with tf32(True):
        out = runtime.forward(model, _input(512, 1), return_aux=True)
    e, e_default = _aux_errors(out, ref), _aux_errors(out_default, ref)
    record("tf32_vs_cpu/mfr/b1", defaults=defaults, tf32_on=e, pytorch_defaults=e_default)
    for err in (e, e_default):
        assert err["image"]["finite"] and err["image"]["rel_l2"] <= 5e-3 and err["image"]["max_abs"] <= 0.05, err


@pytest.mark.parametrize("variant", ["mfr", "sr"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_is_close_to_fp32(recipe, variant, precision):
    if precision == "fp16":
        cuda_only("fp16")
    from panini_models import runtime
    from panini_models.tensors import tensor_to_bgr

    model, cfg = recipe(variant)
    model = runtime.prepare(model, DEV, precision)
    x = _input(cfg["in_size"], 2)
    with tf32(False):
        ref = runtime.forward(model, x, "fp32", return_aux=True)
    out = runtime.forward(model, x, precision, return_aux=True)
    assert out.image.dtype == torch.float32
    e = errors(out.image, ref.image)
    e["theta"] = errors(out.thetas.float(), ref.thetas)["max_abs"]
    e["levels"] = levels(tensor_to_bgr(out.image), tensor_to_bgr(ref.image))
    record(f"{precision}_vs_fp32/{variant}/b2", **e, tolerance=LOW[precision])
    tol = LOW[precision]
    assert e["finite"], e
    assert e["rel_l2"] <= tol["rel_l2"] and e["max_abs"] <= tol["max_abs"], e
    assert e["theta"] <= tol["theta"] and e["levels"] <= tol["levels"], e


def test_uint8_conversions_on_the_gpu_give_the_cpu_bits():
    """The Restorer's crops go up as uint8 and come back as uint8, converted on the GPU: the same
    bits as the NumPy path (a division by a Python scalar would be a reciprocal product on CUDA)."""
    cuda_only("the CUDA conversions")
    from panini_models import tensors

    rng = np.random.default_rng(0)
    crops = list(example_faces(64)[:2]) + [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    crops[2].reshape(-1)[:256] = np.arange(256, dtype=np.uint8)
    x = tensors.bgr_to_tensor(crops, DEV)
    assert x.device.type == "cuda" and torch.equal(x.cpu(), tensors.bgr_to_tensor(crops))
    y = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2
    y.view(-1)[:256] = (torch.arange(256.0) + 0.5) / 255 * 2 - 1          # rounding ties
    got, ref = tensors.tensor_to_bgr(y.to(DEV)), tensors.tensor_to_bgr(y)
    assert all(np.array_equal(a, b) for a, b in zip(got, ref))


# ---------------------------------------------------------------- the CLI on a GPU
@pytest.fixture(scope="module")
def examples_runs(tmp_path_factory):
    """`panini restore examples/ OUT --gpu 0` (in this process), then with every face restored as made,
    on the GPU and on the CPU."""
    from panini_cli import modelopts

    root = tmp_path_factory.mktemp("examples")
    common = [EXAMPLES, "--landmarks", "5", "--ext", "png"]
    plain, out_plain = restore_cli(*common, root / "plain", *gpu_flag())
    cached = modelopts.load_restorer("default", DEV, "fp32")       # the one the run used (lru_cache)
    device = str(next(cached.model.parameters()).device)
    gpu, _ = restore_cli(*common, root / "gpu", *gpu_flag(), *AS_MADE)
    cpu, _ = restore_cli(*common, root / "cpu", "--device", "cpu", *AS_MADE)
    return {"plain": (plain, root / "plain", out_plain, device), "gpu": (gpu, root / "gpu"),
            "cpu": (cpu, root / "cpu"), "root": root}


def _compare_runs(a: Path, b: Path, name: str) -> None:
    ia, ib = images_of(a / "restored_imgs"), images_of(b / "restored_imgs")
    assert sorted(ia) == sorted(ib) and ia
    d = levels([ia[k] for k in sorted(ia)], [ib[k] for k in sorted(ia)])
    worst = max(int(np.abs(ia[k].astype(np.int16) - ib[k].astype(np.int16)).max()) for k in ia)
    record(name, mean_levels=d, max_levels=worst)
    assert d <= 0.5 and worst <= 32, (d, worst)


def test_restore_examples_on_gpu_0(examples_runs):
    summary, out, output, device = examples_runs["plain"]
    files = sorted(EXAMPLES.glob("*.jpg"))
    assert summary["done"] == len(files) and summary["failed"] == 0 and summary["faces"] >= 10, summary
    assert "no CUDA device" not in output
    assert device == DEV
    assert sorted(p.name for p in (out / "restored_imgs").glob("*.png")) == sorted(p.stem + ".png" for p in files)
    verdicts = [c.get("restored") for r in manifest(out) for c in r.get("checks", [])]
    record("restore_examples/plain", summary=summary, restored=verdicts)
    assert examples_runs["cpu"][0]["faces"] == examples_runs["gpu"][0]["faces"] == summary["faces"]
    _compare_runs(examples_runs["gpu"][1], examples_runs["cpu"][1], "restore_examples/gpu0_vs_cpu")


def test_restore_gpus_all_matches_gpu_0(examples_runs):
    """--gpus all: one worker process per GPU (one GPU: this process), the same pictures."""
    cuda_only("--gpus")
    out = examples_runs["root"] / "all"
    cmd = [sys.executable, "-m", "panini_cli", "restore", EXAMPLES, out, "--gpus", "all", "--landmarks", "5",
           "--ext", "png", "-q", "--json", *AS_MADE]
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["done"] == len(list(EXAMPLES.glob("*.jpg"))) and summary["failed"] == 0
    record("restore_examples/gpus_all", devices=torch.cuda.device_count(), summary=summary)
    _compare_runs(out, examples_runs["gpu"][1], "restore_examples/gpus_all_vs_gpu0")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_restore_precision_flag(model_file, tmp_path, precision):
    if precision == "fp16":
        cuda_only("--precision fp16")
    src = write_crops(tmp_path / "in", 64, 4)
    restore_cli(src, tmp_path / "fp32", "-m", model_file, "--aligned", *gpu_flag(), *AS_MADE)
    s, _ = restore_cli(src, tmp_path / precision, "-m", model_file, "--aligned", "--precision", precision,
                       *gpu_flag(), *AS_MADE)
    assert s["done"] == 4 and s["faces"] == 4
    a, b = images_of(tmp_path / "fp32" / "restored_imgs"), images_of(tmp_path / precision / "restored_imgs")
    d = levels([a[k] for k in sorted(a)], [b[k] for k in sorted(a)])
    record(f"restore_precision/{precision}", mean_levels=d)
    assert d <= LOW[precision]["levels"], d


@pytest.mark.parametrize("variant", ["mfr", "sr", "catconv", "small"])
def test_every_variant_restores(variant, tmp_path_factory, tmp_path):
    """restore --aligned with a random-weight model of each preset; the same as the CPU Restorer."""
    from panini_models.panini import PRESETS
    from panini_models.registry import load_model
    from panini_models.restorer import Restorer

    cfg = PRESETS[variant]
    n = 2 if HAVE_CUDA else 1
    path = variant_file(tmp_path_factory.getbasetemp(), variant)
    src = write_crops(tmp_path / "in", cfg.in_size, n)
    s, _ = restore_cli(src, tmp_path / "out", "-m", path, "--aligned", "-b", n, *gpu_flag(), *AS_MADE)
    assert s["done"] == n and s["faces"] == n and s["failed"] == 0
    got = images_of(tmp_path / "out" / "restored_imgs")
    assert all(im.shape == (cfg.out_size, cfg.out_size, 3) for im in got.values())
    recs = sorted((r for r in manifest(tmp_path / "out") if r["status"] == "done"), key=lambda r: r["path"])
    crops = [cv2.imread(r["path"]) for r in recs]
    ref = Restorer(load_model(str(path)), "cpu")(crops)
    d = levels([got[Path(r["output"]).name] for r in recs], [f.image for f in ref])
    thetas = [r["theta"][0] for r in recs]
    record(f"variant/{variant}", mean_levels_vs_cpu=d, thetas=thetas)
    assert d <= 0.5, d
    if variant == "catconv":
        assert thetas == [None] * n
    else:
        assert np.allclose(thetas, [f.theta for f in ref], atol=1e-3), (thetas, [f.theta for f in ref])


def test_batch_size_is_chosen_from_free_cuda_memory(tmp_path):
    """The plan (batch-1 probe, 60% of cudaMemGetInfo's free bytes) holds a batch that then fits."""
    cuda_only("the CUDA memory probe")
    from panini_models import memory
    from panini_models.panini import PaniniNet
    from panini_models.restorer import Restorer

    torch.manual_seed(0)
    restorer = Restorer(PaniniNet("mfr"), DEV)
    free_before = torch.cuda.mem_get_info(torch.device(DEV))[0]
    plan = memory.plan_batch(restorer, 10 ** 6)
    assert plan.reduced and 1 <= plan.batch < 10 ** 6
    assert 0.8 * free_before <= plan.available <= torch.cuda.get_device_properties(0).total_memory
    assert plan.batch * plan.per_face <= memory.USABLE_FRACTION * plan.available
    crops = [c for _ in range(-(-plan.batch // 12)) for c in example_faces(512)][:plan.batch]
    used = memory.peak_extra_bytes(lambda: restorer(crops), restorer.device)
    record("batch_plan/mfr_fp32", batch=plan.batch, per_face_mib=plan.per_face / 2 ** 20,
           available_gib=plan.available / 2 ** 30, used_gib=used / 2 ** 30,
           used_per_face_mib=used / plan.batch / 2 ** 20)
    assert used <= plan.available                             # it fits
    assert used <= 1.1 * plan.batch * plan.per_face            # the linear model is not optimistic


def test_restore_lowers_a_batch_that_does_not_fit_the_gpu(model_file, tmp_path):
    src = write_crops(tmp_path / "in", 64, 3)
    cmd = [sys.executable, "-m", "panini_cli", "restore", "-m", model_file, "-q", "--aligned", "-b", "10000000",
           *gpu_flag(), src, tmp_path / "out"]
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "batch size lowered to fit memory" in text, text
    record("batch_plan/cli_small", message=text[text.index("batch size lowered"):][:200])
    assert len(list((tmp_path / "out" / "restored_imgs").glob("*.png"))) == 3


# ---------------------------------------------------------------- torchrun and NCCL
def _nproc() -> int:
    return min(2, torch.cuda.device_count()) if HAVE_CUDA else 1


def test_torchrun_restore(model_file, tmp_path):
    """`torchrun -m panini_cli restore`: each rank its share, rank 0 the global tally (NCCL with 2+ GPUs)."""
    src = write_crops(tmp_path / "in", 64, 7)
    n = _nproc()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "panini_cli", "restore", "-m", model_file, "--aligned", "--json", "-q", src, tmp_path / "out"]
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    record("torchrun_restore", nproc=n, summary=summary)
    assert summary["done"] == 7 and summary["failed"] == 0
    paths = [r["path"] for r in manifest(tmp_path / "out") if r["status"] == "done"]
    assert sorted(paths) == sorted(str(p) for p in src.glob("*.png"))       # each file once


NCCL_SCRIPT = r"""
import json, os, torch, torch.distributed as dist
from panini_models import sharding
from panini_models.training import dist as tdist
rank, world = sharding.rank_and_world()
local = int(os.environ["LOCAL_RANK"])
if world == 1:                  # init_distributed joins only for WORLD_SIZE > 1: join here, as it would
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", rank=rank, world_size=world)
else:
    assert sharding.init_distributed()
assert dist.get_backend() == "nccl", dist.get_backend()
assert torch.cuda.current_device() == local
counts = sharding.all_reduce_counts({"done": rank + 1, "seconds": 0.25})
assert counts == {"done": world * (world + 1) / 2, "seconds": 0.25 * world}, counts
info = tdist.DistInfo(rank, world, local, torch.device("cuda", local))
t = torch.full((5,), float(rank + 1), device=info.device)
dist.all_reduce(t)
assert t.tolist() == [world * (world + 1) / 2] * 5
m = torch.nn.Conv2d(3, 4, 3).to(info.device)
bn = torch.nn.BatchNorm2d(4).to(info.device)       # int64 num_batches_tracked broadcast too
tdist.broadcast_module(torch.nn.Sequential(m, bn), info)
assert tdist.any_flag(rank == 0, info) is True
g = tdist.gather_cat(torch.full((2, 3), float(rank), device=info.device), info)
assert g.shape == (2 * world, 3)
print(json.dumps({"rank": rank, "world": world, "nccl": torch.cuda.nccl.version()}), flush=True)
sharding.close_distributed()
assert not dist.is_initialized()
"""


def test_nccl_process_group_collectives_and_close(tmp_path):
    cuda_only("NCCL")
    script = tmp_path / "nccl_check.py"
    script.write_text(NCCL_SCRIPT)
    n = _nproc()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), str(script)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    record("nccl", nproc=n, ranks=lines)
    assert sorted(r["rank"] for r in lines) == list(range(n))


def test_two_nccl_ranks_train_like_one_with_the_doubled_batch(tmp_path):
    """The gloo test of tests/test_training_runs.py, on 2 GPUs with NCCL."""
    cuda_only("NCCL")
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA devices, this machine has {torch.cuda.device_count()}")
    data = faces(tmp_path / "hq", 8)
    common = TINY + ["total_steps=3", "d_mbstd_group=1", "lr_g=1e-3", "lr_d=1e-3", "device=cuda"]
    start_cfg = restore_cfg(*common[len(TINY):], "batch_size=2")
    from panini_models.training.api import start
    start(start_cfg, data, tmp_path / "one")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "panini_cli",
           "train", "restore", str(data), "--out", str(tmp_path / "two")]
    for s in common + ["batch_size=1"]:
        cmd += ["--set", s]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = train_records(tmp_path / "one"), train_records(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        for k in one[step]:
            assert two[step][k] == pytest.approx(one[step][k], rel=1e-3, abs=1e-4), (step, k)


# ---------------------------------------------------------------- AMP training, killed and resumed
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_killed_and_resumed(tmp_path, amp):
    """`panini train restore --device cuda --set amp=...`: SIGTERM after a few steps, --resume, the
    losses of the uninterrupted run (up to CUDA's non-deterministic reductions), GradScaler kept."""
    from panini_models.registry import load_model
    from panini_models.restorer import Restorer
    from panini_models.training.api import start
    from panini_models.training.state import CHECKPOINT, load_checkpoint

    device = "cuda" if HAVE_CUDA else "cpu"
    data = faces(tmp_path / "hq", 8)
    args = ["total_steps=6", "batch_size=1", "num_workers=1", f"device={device}", f"amp={amp}"]
    start(restore_cfg(*args), data, tmp_path / "ref")
    ref = train_records(tmp_path / "ref")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "panini_cli", "train", "restore", str(data), "--out", str(run_dir)]
    for s in TINY + args:
        cmd += ["--set", s]
    code, output = sigterm_after_steps(cmd, run_dir, 3, timeout=180)
    assert code == 143, output
    stopped = load_checkpoint(run_dir / CHECKPOINT)["step"]
    assert 3 <= stopped < 6, output
    res = _run_cli(["train", "restore", data, "--out", run_dir, "--resume"])
    assert res.exit_code == 0, res.output
    got = train_records(run_dir)
    assert sorted(got) == list(range(1, 7))
    worst = max(abs(got[s][k] - ref[s][k]) / max(abs(ref[s][k]), 1e-3) for s in ref for k in ref[s])
    config = json.loads((run_dir / "config.json").read_text())
    ignored = any("ignored" in n and "amp" in n for n in config["notes"])
    final = load_checkpoint(run_dir / CHECKPOINT)["trainer"]
    ref_final = load_checkpoint(tmp_path / "ref" / CHECKPOINT)["trainer"]
    record(f"amp/{amp}", stopped_at=stopped, worst_rel_loss_diff=worst, device=config["device"],
           scale=final["scaler_g"].get("scale"), ref_scale=ref_final["scaler_g"].get("scale"))
    assert all(np.isfinite(v) for r in got.values() for v in r.values())
    assert worst <= 2e-2, (worst, got, ref)
    if HAVE_CUDA:
        assert config["device"].startswith("cuda") and not ignored, config
        if amp == "fp16":
            assert final["scaler_g"]["scale"] == ref_final["scaler_g"]["scale"]
    else:
        assert ignored                                  # the dry run: amp is CUDA-only
    out = Restorer(load_model(str(run_dir / "final.safetensors")), DEV)(list(example_faces(64)[:2]))
    assert len(out) == 2 and all(np.isfinite(f.thetas).all() for f in out)


# ---------------------------------------------------------------- video
def test_video_gpus_0_matches_the_cpu(model_file, tmp_path):
    """`panini video --gpus 0` (tracking, --smooth-vdr's DRE and the model on the GPU) against the CPU."""
    clip = need_clip("keep_real_3.mp4")
    common = [clip, "-m", model_file, "--duration", "1", "--landmarks", "5", "--smooth-vdr", "2", "--json", "-q",
              *AS_MADE]
    gpu = summary_of(run_video(*common, "-o", tmp_path / "gpu.mp4", *gpus_flag("0")))
    cpu = summary_of(run_video(*common, "-o", tmp_path / "cpu.mp4", "--device", "cpu"))
    assert gpu["frames"] == cpu["frames"] >= 20 and gpu["faces"] == cpu["faces"] >= 20, (gpu, cpu)
    a, b = yuv_frames(tmp_path / "gpu.mp4"), yuv_frames(tmp_path / "cpu.mp4")
    assert a.shape == b.shape
    psnr = 10 * np.log10(255 ** 2 / max(((a - b) ** 2).mean(), 1e-12))
    record("video/gpus0_vs_cpu", psnr_db=psnr, frames=gpu["frames"], fps=gpu.get("frames_per_second"))
    assert psnr >= 35, psnr
