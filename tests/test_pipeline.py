"""panini_cli.pipeline.run: several model streams give what one stream gives, in input order,
really run at once, and pass a model error on to the caller."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from panini_cli import pipeline


@pytest.fixture(scope="module")
def restorer(model_file):
    from panini_models import registry
    from panini_models.restorer import Restorer

    return Restorer(registry.load_model(str(model_file), "cpu"))


@pytest.fixture
def crops(tmp_path, restorer):
    """Nine aligned 'faces' (smooth noise) as files, and the (path, rel) jobs for them."""
    rng = np.random.default_rng(3)
    jobs = []
    for i in range(9):
        img = cv2.GaussianBlur(rng.integers(0, 255, (restorer.in_size,) * 2 + (3,), dtype=np.uint8), (0, 0), 2)
        path = tmp_path / f"face_{i}.png"
        cv2.imwrite(str(path), img)
        jobs.append((path, path.relative_to(tmp_path)))
    return jobs


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # the same arithmetic in every stream, so results are bit-equal
    yield
    torch.set_num_threads(threads)


def restored(jobs, restorer, **kw):
    prep = pipeline.Preparer(restorer.in_size, pipeline.FaceOptions(aligned=True))
    items = list(pipeline.run(jobs, prep, restorer, [{}, {"mask_bias": 0.2}], workers=2, prefetch=4, **kw))
    return [str(i.rel) for i in items], [[r.image for r in i.faces[0].results] for i in items]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_streams_give_the_results_of_one_stream_in_input_order(crops, restorer, one_thread, batch_size):
    order1, images1 = restored(crops, restorer, batch_size=batch_size, streams=1)
    order3, images3 = restored(crops, restorer, batch_size=batch_size, streams=3)
    assert order1 == order3 == [str(rel) for _, rel in crops]
    for a, b in zip(images1, images3):
        assert len(a) == len(b) == 2                               # both variants, in variant order
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(images1[0][0], images1[0][1])       # the variants differ, so order is checked


def test_streams_run_at_once(crops, restorer):
    """Two batches meet at a barrier inside the model call: with one stream at a time it times out."""
    barrier = threading.Barrier(2, timeout=20)

    class Meeting:
        in_size = restorer.in_size

        def __call__(self, batch, **kw):
            barrier.wait()
            return restorer(batch, **kw)

    prep = pipeline.Preparer(restorer.in_size, pipeline.FaceOptions(aligned=True))
    items = list(pipeline.run(crops[:4], prep, Meeting(), [{}], batch_size=1, workers=1, streams=2))
    assert [len(i.faces[0].results) for i in items] == [1, 1, 1, 1]


def test_a_model_error_in_a_stream_reaches_the_caller(crops, restorer):
    calls = []

    def failing(batch, **kw):
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("out of memory in stream")
        return restorer(batch, **kw)

    failing.in_size = restorer.in_size
    prep = pipeline.Preparer(restorer.in_size, pipeline.FaceOptions(aligned=True))
    with pytest.raises(RuntimeError, match="out of memory in stream"):
        list(pipeline.run(crops, prep, failing, [{}], batch_size=1, workers=1, streams=2))
