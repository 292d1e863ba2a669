"""The batch-size memory model: measuring what a forward costs, fitting a batch to free memory."""
import json
import subprocess
import sys

import cv2
import numpy as np

from panini_models import memory

from conftest import write_small_model


def test_fit_batch_takes_the_largest_batch_that_fits():
    mib = 2 ** 20
    assert memory.fit_batch(8, 100 * mib, 10_000 * mib, fraction=0.5) == 8           # fits as asked
    assert memory.fit_batch(64, 100 * mib, 1_000 * mib, fraction=0.5) == 5           # 500 MiB / 100 MiB
    assert memory.fit_batch(4, 100 * mib, 10 * mib) == 1                             # never below 1
    assert memory.fit_batch(4, 0, 10 * mib) == 4                                     # unknown cost: as asked


PROBE = """
import json, time, torch
from panini_models import memory
def work():
    x = torch.ones(50 * 2 ** 20)          # 200 MiB, touched
    time.sleep(0.05)
    del x
print(json.dumps([memory.peak_extra_bytes(work, "cpu"), memory.peak_extra_bytes(lambda: None, "cpu")]))
"""


def test_peak_extra_bytes_sees_a_short_lived_allocation():
    """In a fresh process: memory an earlier test freed but the process kept (glibc free lists) would
    be reused without growing the resident size, which the CPU measure cannot see."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    got, idle = json.loads(out.stdout.strip().splitlines()[-1])
    assert 150 * 2 ** 20 < got < 400 * 2 ** 20, got / 2 ** 20
    assert idle < 20 * 2 ** 20


PLAN = """
import json, sys
from panini_models import memory
from panini_models.checkpoints import build, read_weights
from panini_models.restorer import Restorer
restorer = Restorer(build(*read_weights(sys.argv[1])[:3]), "cpu")
plan = memory.plan_batch(restorer, 10 ** 7)
print(json.dumps([plan.batch, plan.per_face, plan.available, plan.reduced, plan.describe(),
                  memory.plan_batch(restorer, 2).reduced]))
"""


def test_plan_batch_measures_a_face_and_caps_the_batch(tmp_path):
    path = write_small_model(tmp_path / "m.safetensors")
    out = subprocess.run([sys.executable, "-c", PLAN, str(path)], capture_output=True, text=True, check=True)
    batch, per_face, available, reduced, text, small_reduced = json.loads(out.stdout.strip().splitlines()[-1])
    assert per_face > 0 and available > 0
    assert reduced and 1 <= batch < 10 ** 7
    assert batch * per_face <= memory.USABLE_FRACTION * available
    assert "per face" in text and "asked for 10000000" in text
    assert not small_reduced


def test_restore_lowers_a_batch_that_does_not_fit_and_still_restores(tmp_path):
    """The real command in its own process (as a user runs it: the model freshly loaded)."""
    model = write_small_model(tmp_path / "m.safetensors")
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        img = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(src / f"{i}.png"), img)
    res = subprocess.run(["panini", "restore", "-m", str(model), "-q", "--aligned", "-b", "10000000",
                          str(src), str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "batch size lowered to fit memory" in res.stdout + res.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "restored_imgs").glob("*.png")) == ["0.png", "1.png"]
