"""`inspect`, `edit` and `degrade` end to end on a small model the tests make."""
import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from panini_cli.app import app
from conftest import write_small_model
from panini_models.checkpoints import load_panini, save_weights
from panini_models.tensors import bgr_to_tensor

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    # spread the mask logits so the masks vary per input
    return write_small_model(tmp_path_factory.mktemp("model") / "small.safetensors",
                             tweak=lambda m: m.masks.mlp[2].weight.mul_(30))


def faces_dir(tmp_path, n=3, size=64):
    d = tmp_path / "faces"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = cv2.resize(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(d / f"f{i}.png"), cv2.GaussianBlur(img, (0, 0), 1 + 2 * i))
    return d


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_inspect_theta_is_the_mean_of_the_models_mask(model_file, tmp_path):
    d = faces_dir(tmp_path)
    res = cli("inspect", "-m", model_file, "--aligned", "--dr", "-f", "json", d)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "panini.inspect/1" and len(doc["rows"]) == 3
    model = load_panini(model_file).eval()
    for row in doc["rows"]:
        crop = cv2.imread(row["path"])
        with torch.inference_mode():
            out = model(bgr_to_tensor(crop), return_aux=True)
        assert row["theta"] == pytest.approx(float(out.mask_gan[4].mean()), abs=1e-5)
        assert row["thetas"] == pytest.approx([float(m.mean()) for m in out.mask_gan], abs=1e-5)
        assert np.allclose(row["vdr"], out.vdr[0].numpy(), atol=1e-5)
    assert len({round(r["theta"], 6) for r in doc["rows"]}) > 1        # differently degraded -> different theta


def test_inspect_formats_round_trip(model_file, tmp_path):
    d = faces_dir(tmp_path)
    js = json.loads(cli("inspect", "-m", model_file, "--aligned", "--dr", "-f", "json", d).stdout)["rows"]
    assert cli("inspect", "-m", model_file, "--aligned", "--dr", "-f", "csv", "-o", tmp_path / "t.csv", d).exit_code == 0
    assert cli("inspect", "-m", model_file, "--aligned", "--dr", "-f", "npy", "-o", tmp_path / "t.npy", d).exit_code == 0
    import csv
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    arr = np.load(tmp_path / "t.npy", allow_pickle=False)
    for j, c, a in zip(js, rows, arr):
        assert c["path"] == j["path"] == str(a["path"])
        assert float(c["theta"]) == pytest.approx(j["theta"]) and float(a["theta"]) == pytest.approx(j["theta"], rel=1e-6)
        assert [float(c[f"theta{i + 1}"]) for i in range(5)] == pytest.approx(j["thetas"])
        assert np.allclose([float(c[f"vdr{i}"]) for i in range(len(j["vdr"]))], j["vdr"])
        assert np.allclose(a["vdr"], j["vdr"], atol=1e-6)


def test_inspect_mixed_valid_and_corrupt(model_file, tmp_path):
    d = faces_dir(tmp_path)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    res = cli("inspect", "-m", model_file, "--aligned", "--theta", d, d / "f0.png")
    assert res.exit_code == 1
    assert "broken.png" in res.output
    assert res.stdout.count("\t") == 2 * 3            # f0 named again is not done twice


def test_sweep_rows_and_plot(model_file, tmp_path):
    d = faces_dir(tmp_path, n=1, size=256)
    res = cli("inspect", "-m", model_file, "--aligned", "--sweep", "--r", "16,64", "-f", "json",
              "--plot", tmp_path / "sweep.png", d / "f0.png")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert [r["r"] for r in rows] == [16, 64]
    assert rows[0]["theta"] != rows[1]["theta"]
    assert cv2.imread(str(tmp_path / "sweep.png")) is not None


def test_edit_bias_zero_is_restore_and_bias_is_monotonic(model_file, tmp_path):
    d = faces_dir(tmp_path, n=1)
    out = tmp_path / "edits"
    # --force: random weights never pass the do-no-harm check; this test is about the masks
    res = cli("edit", "-m", model_file, "--aligned", "--force", "--mask-bias", "-0.5,0,0.25,0.5,1", "-o", out, d)
    assert res.exit_code == 0, res.output
    assert cli("restore", "-m", model_file, "--aligned", "--force", "-q", d, tmp_path / "restored").exit_code == 0
    zero = cv2.imread(str(out / "f0_bias+0.00.png"))
    assert np.array_equal(zero, cv2.imread(str(tmp_path / "restored" / "restored_imgs" / "f0.png")))
    far = cv2.imread(str(out / "f0_bias+1.00.png")).astype(float)
    dists = [np.abs(cv2.imread(str(out / f"f0_bias{b:+.2f}.png")).astype(float) - far).mean()
             for b in (-0.5, 0.0, 0.25, 0.5)]
    assert all(a > b for a, b in zip(dists, dists[1:])), dists
    sheet = cv2.imread(str(out / "f0_sheet.png"))
    assert sheet is not None and sheet.shape[1] > 4 * sheet.shape[0] - 200


def test_edit_only_and_blocks(model_file, tmp_path):
    d = faces_dir(tmp_path, n=1)
    out = tmp_path / "e"
    for only in ("gan", "image"):
        assert cli("edit", "-m", model_file, "--aligned", "--force", "--mask-bias", "0", "--only", only,
                   "-o", out, d).exit_code == 0
    gan, img = cv2.imread(str(out / "f0_bias+0.00_gan.png")), cv2.imread(str(out / "f0_bias+0.00_image.png"))
    assert not np.array_equal(gan, img)
    res = cli("edit", "-m", model_file, "--aligned", "--mask-bias", "0.2", "--blocks", "7", "-o", out, d)
    assert res.exit_code == 1 and "numbered 1..5" in res.output


def test_degrade_fixed_and_random_params(tmp_path):
    d = faces_dir(tmp_path, n=2, size=256)
    out = tmp_path / "lq"
    res = cli("degrade", "--r", "16", "--sigma", "3", "--noise", "10", "--jpeg", "30", "--size", "128", "--seed", "5", d, out)
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in (out / "params.jsonl").read_text().splitlines()]
    assert [(r["r"], r["sigma"], r["noise"], r["jpeg"]) for r in recs] == [(16, 3, 10, 30)] * 2
    assert cv2.imread(str(out / "f0.png")).shape == (128, 128, 3)
    out2 = tmp_path / "lq2"
    assert cli("degrade", "--seed", "5", "--size", "128", d, out2).exit_code == 0
    assert cli("degrade", "--seed", "5", "--size", "128", d, tmp_path / "lq3").exit_code == 0
    assert (out2 / "f1.png").read_bytes() == (tmp_path / "lq3" / "f1.png").read_bytes()    # seeds reproduce
    for r in (json.loads(line) for line in (out2 / "params.jsonl").read_text().splitlines()):
        assert 10 <= r["r"] <= 200 and 0 <= r["noise"] <= 25 and 5 <= r["jpeg"] <= 50
    res = cli("degrade", "--noise", "-1", d, tmp_path / "bad")
    assert res.exit_code == 1 and "noise" in res.output


def test_inspect_flags_vdrs_far_from_training(model_file, tmp_path):
    """A model file carrying training vDR statistics flags faces whose vDR lies outside them."""
    from panini_models import vdr_stats
    from panini_models.checkpoints import read_weights

    d = faces_dir(tmp_path)
    kind, cfg, state, _meta = read_weights(model_file)
    vdrs = json.loads(cli("inspect", "-m", model_file, "--aligned", "--dr", "-f", "json", d).stdout)["rows"]
    v = np.array([r["vdr"] for r in vdrs])
    # "training" vDRs clustered around the first face only: the others lie far outside
    rng = np.random.default_rng(0)
    train = v[0] + rng.normal(0, 1e-4, (200, v.shape[1]))
    stats = vdr_stats.compute(train)
    flagged_file = tmp_path / "with_stats.safetensors"
    save_weights(flagged_file, state, kind, cfg, vdr_stats.to_metadata(stats))
    res = cli("inspect", "-m", flagged_file, "--aligned", "-f", "json", d)
    rows = json.loads(res.stdout)["rows"]
    assert [r["outside_training"] for r in rows] == [False, True, True]
    assert rows[1]["ood_distance"] > stats["threshold"] >= rows[0]["ood_distance"]
    assert "unlike anything in this model's training" in res.output
