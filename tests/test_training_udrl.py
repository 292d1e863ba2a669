"""Training the degradation encoder (UDRL): same-degradation pairs of different faces end up
closer, and each pair shares its degradation, not its face. CPU, tiny models, tiny images."""
import numpy as np
import torch

from panini_models.checkpoints import build, read_weights
from panini_models.training.data import list_images, split_holdout
from panini_models.training.dist import DistInfo
from panini_models.training.state import load_config
from panini_models.training.udrl import UDRLTrainer, retrieval_accuracy

from trainhelpers import _keep_thread_settings  # noqa: F401 - autouse: one torch thread in these tests
from trainhelpers import faces


# ------------------------------------------------------------------ UDRL
def test_udrl_makes_same_degradation_pairs_closer(tmp_path):
    """A tiny DRE trained 100 MoCo steps on synthetic faces: held-out pairs of *different* faces
    with one degradation become closer than pairs with different degradations."""
    data = faces(tmp_path / "hq", 48, size=64)
    cfg = load_config("dre", None, [
        "preset=small", 'model={"dre_channels": [8, 8, 16, 16, 32, 32], "dr_dim": 32, "dre_input_size": 32}',
        "hq_size=64", "lq_size=32", "batch_size=16", "queue=64", "momentum=0.99", "num_workers=0",
        "val_count=24", "val_pairs=64", "total_steps=100"])
    train, val = split_holdout(list_images(data), cfg.val_count, cfg.seed)
    trainer = UDRLTrainer(cfg, train, val, DistInfo())
    xq, xk = trainer.val
    assert not set(train) & set(val)
    before = retrieval_accuracy(trainer.moco.encoder_q, xq, xk)
    losses = [trainer.train_step()["infonce"] for _ in range(cfg.total_steps)]
    after = retrieval_accuracy(trainer.moco.encoder_q, xq, xk)
    assert all(np.isfinite(losses))
    # pairwise: P(own key closer than another pair's key), chance 0.5 (untrained: ~0.4-0.55)
    assert after["pairwise_embed"] > 0.75 and after["pairwise_embed"] > before["pairwise_embed"] + 0.2, (before, after)
    assert after["pairwise_vdr"] > 0.7, after
    # top-1 retrieval of the own key among 8 keys, chance 1/8
    assert after["top1_embed"] >= 2 * after["top1_chance"], after
    # the export is a DRE file the restore trainer and checkpoints.build accept
    path = tmp_path / "dre.safetensors"
    trainer.export(path)
    kind, config, state, meta = read_weights(path)
    assert kind == "dre" and meta["trained_steps"] == "100"
    enc = build(kind, config, state).eval()
    torch.testing.assert_close(enc(xq[:4]), trainer.moco.encoder_q.eval()(xq[:4]))


def test_udrl_pairs_share_degradation_not_face(tmp_path):
    from panini_models.training.data import UDRLPairs
    files = list_images(faces(tmp_path / "hq", 6, size=32))
    pairs = UDRLPairs(files, 32, 16)
    a, b = pairs[(0, 2)], pairs[(1, 2)]
    assert a["index"] == 2 and a["partner"] != 2
    assert not torch.equal(a["params"], b["params"])            # new parameters every epoch
    again = pairs[(0, 2)]
    assert torch.equal(again["query"], a["query"]) and again["partner"] == a["partner"]
