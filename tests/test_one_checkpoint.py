"""One checkpoint, one answer; no output may destroy an input (hostile round 3, items 1, 5, 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlp import checkpoint, checkpoint_meta, data, evaluate, predict, store, train

from .conftest import call_cli, files_in, tiny_run
from .test_reliability import assert_refused


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("one-checkpoint"))


def edited(tiny, tmp_path, **config):
    """tiny's checkpoint with config fields replaced (a value None: the field removed)."""
    ckpt = checkpoint.load(tiny / "c.npz")
    ckpt.config.update(config)
    for key in [k for k, v in config.items() if v is None]:
        del ckpt.config[key]
    path = tmp_path / "edited.npz"
    checkpoint.save(path, ckpt)
    return path


@pytest.mark.parametrize("flag, name", [("--save", "X.npy"), ("--log", "meta.json"), ("--metrics-json", "y.npy"),
                                        ("--save-best", "meta.json")])
def test_no_output_may_name_a_file_of_the_store_being_trained_on(tiny, tmp_path, flag, name):
    folder = tmp_path / "store"
    store.convert(tiny / "data", folder)
    before = {p: (folder / p).read_bytes() for p in store.FILES}
    extra = ["--val-split", "0.2"] if flag == "--save-best" else []
    assert_refused(call_cli(train.main, "--data-dir", tiny / "data", "--backend", "dask", "--store", folder,
                            flag, folder / name, *extra),
                   f"{flag} {folder / name} is also the input --store's {name}")
    assert {p: (folder / p).read_bytes() for p in store.FILES} == before


def test_evaluate_and_predict_normalise_as_the_checkpoint_says(tiny, tmp_path):
    """mean 0.5 (a value the reader accepts): evaluate, predict and a resume all use it."""
    path = edited(tiny, tmp_path, mean=0.5)
    code, out, err = call_cli(evaluate.main, "--checkpoint", path, "--data-dir", tiny / "data", "--split", "train")
    assert code == 0, err
    images = tmp_path / "images.npy"
    split = data.load_dataset(tiny / "data", (3, 7), mean=0.5).train
    raw = data.read_idx(tiny / "data" / "train-images-idx3-ubyte.gz")
    labels = data.read_idx(tiny / "data" / "train-labels-idx1-ubyte.gz")
    np.save(images, raw[np.isin(labels, (3, 7))])
    code, pred_out, err = call_cli(predict.main, "--checkpoint", path, images)
    assert code == 0, err
    predicted = [int(line.rsplit(" ", 1)[1]) for line in pred_out.splitlines()]
    # evaluate's count of correct rows is the count of predict's answers that match the labels
    correct = sum(p == d for p, d in zip(predicted, split.digits))
    assert f"({correct}/{len(split.y)})" in out


@pytest.mark.parametrize("shape", [None, [784], [14, 56]])
def test_a_checkpoint_without_or_with_an_edited_image_shape(tiny, tmp_path, shape):
    path = edited(tiny, tmp_path, image_shape=shape)
    if shape is None:   # the reader refuses it
        assert_refused(call_cli(evaluate.main, "--checkpoint", path, "--data-dir", tiny / "data"), "image_shape")
        return
    # the reader takes it (its product is n_features); evaluate and predict both refuse 28x28 images, in one line
    assert_refused(call_cli(evaluate.main, "--checkpoint", path, "--data-dir", tiny / "data"),
                   "the checkpoint expects images of")
    image = tmp_path / "digit.npy"
    np.save(image, np.zeros((28, 28), np.uint8))
    code, _, err = call_cli(predict.main, "--checkpoint", path, image)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_edited_mean_is_refused_on_resume_as_other_rows(tiny, tmp_path):
    """--resume normalises with the checkpoint's mean and std: a hand-edited mean gives other rows, which the
    data fingerprint refuses (before, the run trained on MNIST's constants and wrote them back silently)."""
    path = edited(tiny, tmp_path, mean=0.5)
    assert_refused(call_cli(train.main, "--data-dir", tiny / "data", "--resume", path, "--epochs", "2", "--quiet"),
                   "fingerprints differ")
    assert files_in(tmp_path) == ["edited.npz"]


def test_the_reader_names_a_missing_image_shape(tiny, tmp_path):
    meta = json.loads(str(np.load(edited(tiny, tmp_path, image_shape=None))["meta"]))
    with pytest.raises(checkpoint.CheckpointError, match="'config.image_shape' is None"):
        checkpoint_meta.validate_config(meta["config"], "c.npz")
