"""Training pieces on their own: rank-split and resumable batches, seeded and paired datasets,
D features, per-sample BatchNorm, VGG16 loading, config files, PSNR/SSIM and `panini evaluate`."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from panini_models.stylegan2 import StyleGAN2Discriminator
from panini_models.training import metrics
from panini_models.training.data import FaceDataset, ResumableBatches, list_images
from panini_models.training.losses import PerceptualLoss, VGG16Features, discriminator_features, load_vgg16
from panini_models.training.loop import PerSampleBatchNorm2d
from panini_models.training.state import load_config

from trainhelpers import _keep_thread_settings  # noqa: F401 - autouse: one torch thread in these tests
from trainhelpers import _run_cli, faces

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# ------------------------------------------------------------------ pieces
def test_batches_split_over_ranks_like_one_doubled_batch():
    one = iter(ResumableBatches(10, 4, seed=3))
    ranks = [iter(ResumableBatches(10, 2, r, 2, seed=3)) for r in range(2)]
    for _ in range(6):                                   # crosses epochs (2 batches per epoch)
        assert sorted(next(one)) == sorted(next(ranks[0]) + next(ranks[1]))
    resumed = iter(ResumableBatches(10, 4, seed=3, start=4))
    fresh = iter(ResumableBatches(10, 4, seed=3))
    assert [next(fresh) for _ in range(6)][4:] == [next(resumed) for _ in range(2)]


def test_dataset_is_seeded_per_epoch_and_index(tmp_path):
    files = list_images(faces(tmp_path / "hq", 3))
    ds = FaceDataset(files, 128, 64, seed=5)
    a, b = ds[(0, 1)], ds[(0, 1)]
    assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])
    assert a["lq"].shape == (3, 64, 64) and a["gt"].shape == (3, 128, 128)
    assert not torch.equal(ds[(1, 1)]["lq"], a["lq"])
    flips = {bool(torch.equal(ds[(e, 0)]["gt"], ds.__class__(files, 128, 64, flip=False)[(e, 0)]["gt"]))
             for e in range(8)}
    assert flips == {True, False}                        # some epochs flipped, some not


def test_discriminator_features_match_its_forward():
    torch.manual_seed(0)
    d = StyleGAN2Discriminator(64, channel_base=512, channel_max=16)
    x = torch.randn(4, 3, 64, 64)
    feats, logits = discriminator_features(d, x)
    torch.testing.assert_close(logits, d(x), rtol=0, atol=0)
    assert len(feats) == len(d.blocks) + 2


def test_per_sample_batchnorm_is_batchnorm_at_batch_one():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(1).train()
    ps = PerSampleBatchNorm2d.replace(bn).train()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(ps(x[:1]), bn(x[:1]))
    torch.testing.assert_close(ps.running_var, bn.running_var)
    joint = ps(x)                     # each sample normalised on its own
    torch.testing.assert_close(joint[1:2], PerSampleBatchNorm2d.replace(bn).train()(x[1:2]))


def test_vgg16_loads_torchvision_layout_and_rejects_other_files(tmp_path):
    torch.manual_seed(0)
    ref = VGG16Features()          # random weights: only the loading path is tested here
    sd = {f"features.{k}": v for k, v in ref.state_dict().items()}
    sd.update({"features.24.weight": torch.zeros(512, 512, 3, 3), "classifier.0.weight": torch.zeros(4, 4)})
    torch.save(sd, tmp_path / "vgg16.pth")
    vgg = load_vgg16(tmp_path / "vgg16.pth")
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in vgg.state_dict().items())
    assert isinstance(vgg[21], torch.nn.Conv2d) and len(vgg) == 22        # ends at conv4_3, pre-ReLU
    loss = PerceptualLoss(vgg)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(loss(x, x)) == 0.0 and float(loss(x, x.flip(-1))) > 0
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="torchvision-layout VGG16"):
        load_vgg16(tmp_path / "other.pth")


def test_config_file_and_overrides(tmp_path):
    (tmp_path / "c.toml").write_text('task = "sr"\nbetas = [0.5, 0.9]\n[model]\nchannel_max = 64\n')
    cfg = load_config("restore", tmp_path / "c.toml", ["model.rrdb_channels=8", "flip=false", "lr_g=3e-4",
                                                       'degradation={"r": [10, 50]}'])
    assert cfg.task == "sr" and cfg.betas == (0.5, 0.9) and cfg.flip is False and cfg.lr_g == 3e-4
    assert cfg.model == {"channel_max": 64, "rrdb_channels": 8} and cfg.degradation == {"r": [10, 50]}
    with pytest.raises(ValueError, match="did you mean lr_g"):
        load_config("restore", None, ["lr_q=1"])
    with pytest.raises(ValueError, match="not key=value"):
        load_config("restore", None, ["lr_g"])


def test_paired_folder_mode_reads_lq_by_relative_path(tmp_path):
    hq = faces(tmp_path / "hq" / "a", 2).parent
    lq_root = tmp_path / "lq" / "a"
    lq_root.mkdir(parents=True)
    for p in sorted((hq / "a").glob("*.png")):
        img = cv2.resize(cv2.imread(str(p)), (32, 32), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(lq_root / f"{p.stem}.jpg"), img)
    files = list_images(hq)
    ds = FaceDataset(files, 128, 64, "pairs", flip=False, pairs_dir=tmp_path / "lq", root=hq)
    item = ds[(0, 1)]
    want = cv2.resize(cv2.imread(str(lq_root / "001.jpg")), (64, 64), interpolation=cv2.INTER_CUBIC)
    torch.testing.assert_close(item["lq"], torch.from_numpy(want[..., ::-1].copy()).permute(2, 0, 1) / 127.5 - 1)
    (lq_root / "000.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="no LQ image"):
        FaceDataset(files, 128, 64, "pairs", pairs_dir=tmp_path / "lq", root=hq)


# ------------------------------------------------------------------ metrics / evaluate
def _naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    g = cv2.getGaussianKernel(11, 1.5)
    w = g @ g.T
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_psnr_and_ssim_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 20, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    plus1 = np.minimum(a.astype(int) + 1, 255).astype(np.uint8)
    mse = np.mean((plus1.astype(float) - a) ** 2)
    assert metrics.psnr(a, plus1) == pytest.approx(10 * np.log10(255 ** 2 / mse))
    assert metrics.psnr(a, a) == float("inf") and metrics.ssim(a, a) == pytest.approx(1.0)
    expect = np.mean([_naive_ssim(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)])
    assert metrics.ssim(a, b) == pytest.approx(expect, abs=1e-9)
    assert metrics.ssim(a, b, "y") == pytest.approx(_naive_ssim(metrics.to_y(a), metrics.to_y(b)), abs=1e-9)
    assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(b, a))


def test_evaluate_matches_by_relative_path_and_stem(tmp_path):
    rng = np.random.default_rng(1)
    gt, res = tmp_path / "gt", tmp_path / "res"
    (gt / "sub").mkdir(parents=True)
    (res / "sub").mkdir(parents=True)
    imgs = {}
    for name in ("sub/a", "b", "c"):
        img = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
        cv2.imwrite(str(gt / f"{name}.jpg"), img)
        noisy = np.clip(cv2.imread(str(gt / f"{name}.jpg")).astype(int) + rng.integers(-9, 10, img.shape), 0, 255)
        imgs[name] = noisy.astype(np.uint8)
    cv2.imwrite(str(res / "sub" / "a.png"), imgs["sub/a"])
    cv2.imwrite(str(res / "b.png"), imgs["b"])
    cv2.imwrite(str(res / "extra.png"), imgs["c"])
    res_json = tmp_path / "m.json"
    out = _run_cli(["evaluate", res, gt, "--json", res_json])
    assert out.exit_code == 0, out.output
    doc = json.loads(res_json.read_text())
    assert doc["count"] == 2 and doc["unmatched_restored"] == ["extra.png"] and doc["unmatched_gt"] == ["c.jpg"]
    a_gt = cv2.imread(str(gt / "sub" / "a.jpg"))
    row = next(r for r in doc["images"] if r["name"] == "sub/a.png")
    assert row["psnr"] == pytest.approx(metrics.psnr(imgs["sub/a"], a_gt))
    assert row["ssim"] == pytest.approx(metrics.ssim(imgs["sub/a"], a_gt))
    assert "lpips" in doc["not_computed"] and "not computed" in " ".join(out.output.split())
    cv2.imwrite(str(res / "b.png"), cv2.resize(imgs["b"], (16, 16)))
    out = _run_cli(["evaluate", res, gt])
    assert out.exit_code == 1 and "use --resize" in " ".join(out.output.split())
    assert _run_cli(["evaluate", res, gt, "--resize"]).exit_code == 0


def test_trainset_faces_make_training_samples():
    folder = SHARED / "data" / "trainset" / "utkface"
    if not folder.exists():
        pytest.skip(f"{folder} not found: needs ../shared beside the repository")
    files = sorted(folder.glob("*.jpg"))[:3]
    ds = FaceDataset(files, 128, 64)
    item = ds[(0, 2)]
    assert item["gt"].shape == (3, 128, 128) and item["lq"].shape == (3, 64, 64)
    assert -1 <= float(item["lq"].min()) and float(item["lq"].max()) <= 1
    p = item["params"]
    assert 10 <= p[1] <= 200 and 5 <= p[3] <= 50
