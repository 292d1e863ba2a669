"""The batch-size memory model: measuring what a forward costs, fitting a batch to free memory."""
import time

import cv2
import numpy as np
import torch
from typer.testing import CliRunner

from panini_cli.app import app
from panini_models import memory
from panini_models.checkpoints import read_weights, build
from panini_models.restorer import Restorer

from conftest import write_small_model


def test_fit_batch_takes_the_largest_batch_that_fits():
    mib = 2 ** 20
    assert memory.fit_batch(8, 100 * mib, 10_000 * mib, fraction=0.5) == 8           # fits as asked
    assert memory.fit_batch(64, 100 * mib, 1_000 * mib, fraction=0.5) == 5           # 500 MiB / 100 MiB
    assert memory.fit_batch(4, 100 * mib, 10 * mib) == 1                             # never below 1
    assert memory.fit_batch(4, 0, 10 * mib) == 4                                     # unknown cost: as asked


def test_peak_extra_bytes_sees_a_short_lived_allocation():
    def work():
        x = torch.ones(50 * 2 ** 20)          # 200 MiB, touched
        time.sleep(0.05)
        del x

    got = memory.peak_extra_bytes(work, "cpu")
    assert 150 * 2 ** 20 < got < 400 * 2 ** 20, got / 2 ** 20
    assert memory.peak_extra_bytes(lambda: None, "cpu") < 20 * 2 ** 20


def test_plan_batch_measures_a_face_and_caps_the_batch(tmp_path):
    path = write_small_model(tmp_path / "m.safetensors")
    restorer = Restorer(build(*read_weights(path)[:3]), "cpu")
    plan = memory.plan_batch(restorer, 10 ** 7)
    assert plan.per_face > 0 and plan.available > 0
    assert plan.reduced and 1 <= plan.batch < 10 ** 7
    assert plan.batch * plan.per_face <= memory.USABLE_FRACTION * plan.available
    assert "per face" in plan.describe() and "asked for 10000000" in plan.describe()
    assert not memory.plan_batch(restorer, 2).reduced


def test_restore_lowers_a_batch_that_does_not_fit_and_still_restores(tmp_path):
    model = write_small_model(tmp_path / "m.safetensors")
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        img = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(src / f"{i}.png"), img)
    res = CliRunner().invoke(app, ["restore", "-m", str(model), "-q", "--aligned", "-b", "10000000",
                                   str(src), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "batch size lowered to fit memory" in res.output
    assert sorted(p.name for p in (tmp_path / "out" / "restored_imgs").glob("*.png")) == ["0.png", "1.png"]
