"""One settings table: every value a flag accepts is one the checkpoint reader (and the estimator)
accepts, for every setting, drawn by hypothesis; and the boundaries are the same on both sides."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from mlp import checkpoint, checkpoint_meta, settings, train
from mlp.settings import SETTINGS

from .conftest import tiny_run

#: the settings a checkpoint keeps, and where: the run's in its config, the others in its metadata
KEPT = {**{name: ("config", name) for name in settings.RUN_KEYS}, "epochs": ("meta", "target_epochs"),
        "threads": ("meta", "threads"), "val_split": ("config", "val_split")}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tiny_run(tmp_path_factory.mktemp("settings"))
    return checkpoint.load(root / "c.npz")


def reader_accepts(saved, name: str, value) -> bool:
    """Whether the checkpoint reader takes `value` for the setting `name`, written as the writer
    writes it (JSON)."""
    meta = {"format": checkpoint_meta.FORMAT, "config": dict(saved.config), "epoch": 1, "step": 5,
            "step_in_epoch": 0, "rng_state": saved.rng_state, "target_epochs": 1}
    where, key = KEPT[name]
    (meta["config"] if where == "config" else meta)[key] = value
    try:
        parsed = checkpoint_meta.parse_meta(json.dumps(meta), "c.npz")
        checkpoint_meta.validate_config(parsed["config"], "c.npz")
    except checkpoint.CheckpointError:
        return False
    return True


def flag_value(name: str, words: list[str]):
    """What `python -m mlp.train` makes of the flag of `name` given `words`, or None if refused."""
    try:
        args = train.build_parser().parse_args([settings.flag(name), *words])
    except SystemExit:
        return None
    value = getattr(args, name)
    return train.classes_given(value) if name == "classes" else value


def texts(s: settings.Setting):
    """Words a user might give the flag of `s`: around and at its bounds, far beyond, and junk."""
    junk = st.sampled_from(["", "nan", "inf", "-inf", "1e400", "-0", "0x10", "1_0", " 3", "full", "auto", "abc"])
    if s.kind == "int":
        near = [s.lo - 1, s.lo, s.lo + 1, s.hi - 1, s.hi, s.hi + 1]
        wide = st.integers(min_value=int(s.lo) - 5, max_value=int(min(s.hi, 1 << 70)) + 5)
        numbers = st.one_of(st.sampled_from(near), wide)
        return st.one_of(numbers.map(str), junk)
    if s.kind == "float":
        edge = [s.lo, s.hi, math.nextafter(s.lo, math.inf), math.nextafter(s.hi, -math.inf), 1e308, 5e-324]
        return st.one_of(st.sampled_from(edge).map(repr), st.floats().map(repr), st.integers(-3, 3).map(str), junk)
    return st.one_of(st.sampled_from([str(c) for c in s.choices]), junk)


@pytest.mark.parametrize("name", [n for n in KEPT if n not in ("classes", "nesterov")])
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_what_a_flag_accepts_the_reader_accepts_and_refuses_alike(saved, name, data):
    word = data.draw(texts(SETTINGS[name]))
    value = flag_value(name, [word])
    if name == "threads" and value == "auto":
        return                                  # not a count: nothing is recorded
    if value is not None:
        assert reader_accepts(saved, name, value), (name, word, value)
        assert settings.check(name, value) == value          # the estimator's check is the same
    else:                                      # a refused number is refused by the reader too
        try:
            number = float(word) if SETTINGS[name].kind == "float" else int(word)
        except ValueError:
            return
        assert not reader_accepts(saved, name, number), (name, word)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from([str(d) for d in range(12)] + ["-1", "all", "x"]), max_size=12))
def test_every_class_list_the_flag_accepts_the_reader_accepts(saved, words):
    try:
        value = flag_value("classes", words)
    except Exception as exc:                    # a bad list: one UserError, named
        assert type(exc).__name__ == "UserError" and "--classes" in str(exc)
        return
    if value not in (None, "all"):
        assert reader_accepts(saved, "classes", value) and 2 <= len(value) <= 10


def test_the_nesterov_flag_is_a_setting_the_reader_takes(saved):
    assert flag_value("nesterov", []) is True and reader_accepts(saved, "nesterov", True)
    assert not reader_accepts(saved, "nesterov", 1) and not reader_accepts(saved, "nesterov", "yes")
