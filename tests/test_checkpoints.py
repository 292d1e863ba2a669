"""Foreign checkpoint layouts: every key consumed or reported, clear errors, safe loading."""
import json
import re
from collections import OrderedDict

import pytest
import torch

from panini_models import checkpoints
from panini_models.checkpoints import CheckpointError
from panini_models.ops import fir_kernel
from panini_models.panini import PaniniNet

import official
from conftest import REFERENCE, need


def _zeros_from(entries, prefix=""):
    return OrderedDict((prefix + k, torch.zeros(s, dtype=torch.int64 if t == "int64" else torch.float32))
                       for k, s, t in entries)


@pytest.fixture(scope="module")
def mfr_file(tmp_path_factory):
    return official.write_restorer_file("mfr", tmp_path_factory.mktemp("ck") / "mfr.pth")


@pytest.mark.parametrize("variant", ["mfr", "sr"])
def test_every_official_entry_is_consumed_or_reported(variant, tmp_path):
    path = official.write_restorer_file(variant, tmp_path / f"{variant}.pth")
    imported = checkpoints.import_file(path)
    listed = [k for k, _s, _t in official.keys(variant)["state_dict"]]
    report = imported.report
    accounted = set(report.consumed) | set(report.constants) | set(report.skipped)
    assert set(listed) <= accounted
    assert {"meta", "optimizer"} <= set(report.skipped)
    gen = [k for k in listed if k.startswith("generator.")]
    assert set(gen) == set(report.consumed) | set(report.constants)     # inference keys all used
    assert all(not k.startswith("generator.") for k in report.skipped)
    # the imported tensors are exactly the file's, after the layout transform
    model = checkpoints.build(imported.kind, imported.config, imported.state_dict)
    arrays = official.recipe_arrays(variant)
    w = arrays["generator.convs.3.conv.weight_orig"]
    assert torch.equal(model.stylegan.convs[3].conv.weight.detach(), torch.from_numpy(w)[0])
    assert torch.equal(model.ife.branch[2].weight.detach(), torch.from_numpy(arrays["fusion_out.2.weight"]))


def _tamper(path, tmp_path, fn):
    obj = torch.load(path, weights_only=True)
    fn(obj["state_dict"])
    out = tmp_path / "tampered.pth"
    torch.save(obj, out)
    return out


def test_wrong_shape_is_a_clear_error(mfr_file, tmp_path):
    key = "generator.fusion_out.1.weight"
    bad = _tamper(mfr_file, tmp_path, lambda sd: sd.__setitem__(key, torch.zeros(512, 512, 1, 1)))
    with pytest.raises(CheckpointError) as e:
        checkpoints.import_file(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and key in msg and "(512, 512, 3, 3)" in msg


def test_missing_key_is_a_clear_error(mfr_file, tmp_path):
    key = "generator.AFS_maskGen.mapping.2.bias"
    bad = _tamper(mfr_file, tmp_path, lambda sd: sd.pop(key))
    with pytest.raises(CheckpointError, match=re.escape(key)):
        checkpoints.import_file(bad)


def test_unexpected_key_is_reported(mfr_file, tmp_path):
    bad = _tamper(mfr_file, tmp_path, lambda sd: sd.__setitem__("generator.extra_head.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match="unexpected panini_official keys: generator.extra_head.weight"):
        checkpoints.import_file(bad)


def test_unknown_layout_one_line_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2), "fc.bias": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError) as e:
        checkpoints.import_file(path)
    msg = str(e.value)
    assert "\n" not in msg and "unknown checkpoint layout" in msg
    assert "expected" in msg and "conv1.weight" in msg          # says what it found


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        checkpoints.import_file(path)
    assert not marker.exists()


def test_moco_import_follows_the_official_copy_table(tmp_path):
    spec = official.keys("moco")
    sd = OrderedDict()
    for i, (k, s, t) in enumerate(spec["state_dict"]):
        sd[k] = official.filler(s, t, i) if t != "int64" else torch.full(s, i, dtype=torch.int64)
    path = tmp_path / "moco_checkpoint_0199.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}}}, path)
    imported = checkpoints.import_file(path)
    assert imported.kind == "dre"
    model = checkpoints.build(imported.kind, imported.config, imported.state_dict)
    ours = model.state_dict()
    pairs = spec["deg_encoder_copy"]["pairs"]
    assert len(pairs) == 46
    for source, target, _restorer_key, _shape in pairs:
        name = target.replace("deg_encoder.E.", "body.").replace("deg_encoder.mlp.", "head.")
        assert torch.equal(ours[name], sd[source]), (source, target)
    skipped = imported.report.skipped
    assert "module.queue" in skipped and "module.encoder_k.E.0.weight" in skipped


def _mmgen_state():
    spec = json.loads(need(REFERENCE / "keys_stylegan2_mmgen.json").read_text())
    sd = OrderedDict()
    for i, (k, s, t) in enumerate(spec["generator_ema"] + spec["discriminator"]):
        if k.endswith("kernel"):
            sd[k] = fir_kernel() * (4 if k.startswith("generator_ema.") else 1)
        else:
            sd[k] = official.filler(s, t, i)
    return spec, sd


def test_mmgen_stylegan2_import(tmp_path):
    spec, sd = _mmgen_state()
    sd["generator.constant_input.input"] = torch.zeros(1, 512, 4, 4)      # a non-EMA copy: ignored
    path = tmp_path / "stylegan2-ffhq-config-f-official.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": sd}, path)
    imported = checkpoints.import_file(path)
    assert imported.kind == "stylegan2"
    assert imported.config == {"size": 1024, "style_dim": 512, "n_mlp": 8, "channel_base": 32768, "channel_max": 512}
    rep = imported.report
    assert len(rep.consumed) + len(rep.constants) == spec["num_generator_ema_entries"] + spec["num_discriminator_entries"]
    assert rep.skipped["generator.constant_input.input"].startswith("non-EMA")
    assert torch.equal(imported.state_dict["generator.const"], sd["generator_ema.constant_input.input"])
    assert torch.equal(imported.state_dict["discriminator.out.weight"],
                       sd["discriminator.final_linear.1.linear.weight_orig"])


# rosinality stylegan2-pytorch names, written out from its model.py (independently of layouts.py):
ROSINALITY_FROM_MMGEN = [
    (r"^generator_ema\.style_mapping\.(\d+)\.linear\.weight_orig$", r"g_ema.style.\1.weight"),
    (r"^generator_ema\.style_mapping\.(\d+)\.bias$", r"g_ema.style.\1.bias"),
    (r"^generator_ema\.constant_input\.input$", "g_ema.input.input"),
    (r"^generator_ema\.injected_noise_(\d+)$", r"g_ema.noises.noise_\1"),
    (r"^generator_ema\.(.*)\.style_modulation\.linear\.weight_orig$", r"g_ema.\1.modulation.weight"),
    (r"^generator_ema\.(.*)\.style_modulation\.bias$", r"g_ema.\1.modulation.bias"),
    (r"^generator_ema\.(.*)\.noise_injector\.weight$", r"g_ema.\1.noise.weight"),
    (r"^generator_ema\.(.*)\.weight_orig$", r"g_ema.\1.weight"),
    (r"^generator_ema\.(.*)$", r"g_ema.\1"),
    (r"^discriminator\.(.*)\.conv\.weight_orig$", r"d.\1.weight"),
    (r"^discriminator\.(.*)\.linear\.weight_orig$", r"d.\1.weight"),
    (r"^discriminator\.(.*)$", r"d.\1"),
]


def test_rosinality_layout_imports_to_the_same_model(tmp_path):
    """A rosinality file (g / g_ema / d / optimisers / argparse args) holding the same values
    as an mmgen file must import to the identical state dict."""
    import argparse

    _spec, sd = _mmgen_state()
    parts = {"g_ema": OrderedDict(), "d": OrderedDict()}
    for k, v in sd.items():
        for pattern, repl in ROSINALITY_FROM_MMGEN:
            if re.match(pattern, k):
                part, name = re.sub(pattern, repl, k).split(".", 1)
                parts[part][name] = v
                break
    assert "conv1.conv.weight" in parts["g_ema"] and "convs.0.conv.blur.kernel" in parts["g_ema"]
    assert "final_linear.0.weight" in parts["d"] and "convs.1.skip.1.weight" in parts["d"]
    path = tmp_path / "550000.pt"
    torch.save({"g": parts["g_ema"], "g_ema": parts["g_ema"], "d": parts["d"], "g_optim": {"state": {}},
                "d_optim": {"state": {}}, "args": argparse.Namespace(size=1024), "ada_aug_p": 0.0}, path)
    mm_path = tmp_path / "mmgen.pth"
    torch.save({"state_dict": sd}, mm_path)
    ros, mm = checkpoints.import_file(path), checkpoints.import_file(mm_path)
    assert ros.report.layout == "stylegan2_rosinality"
    assert ros.config == mm.config and set(ros.state_dict) == set(mm.state_dict)
    for k in mm.state_dict:
        assert torch.equal(ros.state_dict[k], mm.state_dict[k]), k
    assert {"g", "g_optim", "d_optim", "args", "ada_aug_p"} <= set(ros.report.skipped)


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = PaniniNet("small").eval()
    sha = checkpoints.save_weights(tmp_path / "m.safetensors", model.state_dict(), "panini",
                                   json.loads(model.config.to_json()))
    assert sha == checkpoints.file_sha256(tmp_path / "m.safetensors")
    loaded = checkpoints.load_panini(tmp_path / "m.safetensors").eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError) as e:
        checkpoints.load_panini(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
