"""--backend auto (the default): NumPy on the CPU; on CUDA the first of JAX, torch (each with a
compiled engine there) that sees the GPU, else CuPy; checked on the CPU with stand-ins for which
libraries see a GPU. And JAX never takes 75% of a GPU unless told to."""

from __future__ import annotations

import dataclasses
import os

import pytest

from mlp import backends, train
from mlp.backends import libraries

from .conftest import call_cli, make_dataset


def sees_a_gpu(name, compiled=True):
    """A stand-in factory: `name` on cuda:N, with a compiled engine or not (the NumPy backend's
    namespace underneath, so that a run can go through the whole command on the CPU)."""
    def factory(index):
        base = libraries.FACTORIES["numpy"](None)
        return dataclasses.replace(base, name=name, device=f"cuda:{index}",
                                   compiled_engine=(lambda *a, **k: None) if compiled else None)
    return factory


def sees_no_gpu(name):
    def factory(index):
        raise backends.BackendError(f"CUDA was asked for with --backend {name}, but {name} sees no GPU; install X")
    return factory


@pytest.fixture
def gpus(monkeypatch):
    """gpus(jax=True, torch=False, cupy=True): which libraries "see a GPU"."""
    def set_(**seen):
        for name in backends.AUTO_CUDA:
            factory = sees_a_gpu(name, compiled=name != "cupy") if seen.get(name) else sees_no_gpu(name)
            monkeypatch.setitem(libraries.FACTORIES, name, factory)
    return set_


@pytest.mark.parametrize("seen, picked, reason", [
    ({"jax": True, "torch": True, "cupy": True}, "jax", "the fastest installed backend with a compiled engine on CUDA"),
    ({"torch": True, "cupy": True}, "torch", "an installed backend with a compiled engine on CUDA "
                                             "(jax: CUDA was asked for with --backend jax, but jax sees no GPU)"),
    ({"cupy": True}, "cupy", "no backend with a compiled engine can use cuda:1 (jax: CUDA was asked for with "
                             "--backend jax, but jax sees no GPU; torch: CUDA was asked for with --backend torch, "
                             "but torch sees no GPU), so eager CuPy"),
])
def test_auto_on_cuda_picks_the_fastest_that_sees_the_gpu(gpus, seen, picked, reason):
    gpus(**seen)
    for asked in (None, "auto", "AUTO"):
        chosen = backends.resolve("cuda:1", asked)
        assert (chosen.name, chosen.device, chosen.picked) == (picked, "cuda:1", reason)
    assert backends.resolve("cuda:1", "cupy").picked is None           # asked for by name: no reason to give


def test_auto_where_no_library_sees_the_gpu_is_one_line(gpus):
    gpus()
    with pytest.raises(backends.BackendError) as info:
        backends.resolve("cuda")
    message = str(info.value)
    assert message.startswith("no installed library can use --device cuda (jax: CUDA was asked for with --backend "
                              "jax, but jax sees no GPU; torch: ")
    assert "install X" not in message and "\n" not in message
    assert message.endswith("pip install 'mlp-by-hand[cuda12]' (CUDA 12) or 'mlp-by-hand[cuda13]' (CUDA 13): "
                            "JAX and CuPy for the GPU, or use --device cpu")


def test_auto_with_a_wrong_device_index_names_the_devices(monkeypatch):
    def no_such(index):
        raise libraries._no_such_device(index, ["cuda:0 (Some GPU)"])   # as each library's factory raises it
    for name in backends.AUTO_CUDA:
        monkeypatch.setitem(libraries.FACTORIES, name, no_such)
    with pytest.raises(backends.BackendError, match=r"^device cuda:3 does not exist; devices: cuda:0 \(Some GPU\)$"):
        backends.resolve("cuda:3")


def test_auto_on_the_cpu_is_numpy():
    for asked in (None, "auto"):
        chosen = backends.resolve("cpu", asked)
        assert (chosen.name, chosen.picked) == ("numpy", None)


def test_the_start_line_says_what_auto_picked_and_why(gpus, tmp_path):
    """The whole command, with a stand-in JAX that 'sees' cuda:0 (NumPy underneath, eager: its
    stand-in compiled engine is only asked for by --engine auto, so --engine eager here)."""
    make_dataset(tmp_path / "data", n_train=200, n_test=40, labels=[3, 7])
    gpus(jax=True, torch=True, cupy=True)
    code, out, err = call_cli(train.main, "--data-dir", tmp_path / "data", "--device", "cuda", "--epochs", "1",
                              "--engine", "eager", "--hidden", "4")
    assert code == 0, err
    assert err.splitlines()[0] == ("backend auto -> jax (eager): the fastest installed backend with a compiled "
                                   "engine on CUDA")
    assert err.splitlines()[1].startswith("training: jax on cuda:0 ")
    code, out, err = call_cli(train.main, "--data-dir", tmp_path / "data", "--device", "cuda", "--epochs", "1",
                              "--engine", "eager", "--hidden", "4", "--backend", "cupy")
    assert code == 0 and "backend auto" not in err                 # asked for by name: nothing to explain


def test_jax_takes_only_what_it_uses_unless_told_otherwise(monkeypatch):
    jax = pytest.importorskip("jax")
    seen, devices = [], jax.devices      # the setting as JAX's clients start (jax.devices()), then after
    monkeypatch.setattr(jax, "devices", lambda *a: seen.append(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))
                        or devices(*a))
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    libraries.FACTORIES["jax"](None)
    assert seen[0] == "false" and "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ    # no trace left
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")     # the user's own setting is kept
    libraries.FACTORIES["jax"](None)
    assert seen[-1] == os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"
