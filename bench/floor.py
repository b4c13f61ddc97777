"""The hardware's limit for one epoch: operation and byte counts, and measured rates.

FLOPs of one full-batch epoch, N rows, D inputs, H hidden units, K outputs (1 for two classes,
C for C > 2; multiply-add = 2):

    X @ w1                  2 N D H         X.T @ d_z1          2 N D H
    a1 @ w2, a1.T @ d_z2    4 N H K         d_z2 @ w2.T         2 N H K
    elementwise (N, H)      ~5 N H          elementwise (N, K)  ~20 N K   (bias, relu, mask, sums; head)
    update                  2 (D H + H + H K + K)   (plain GD's: the floor of every optimiser)

The matrix products dominate (D = 784 pixels for MNIST), so the floor is the GEMM time at the device's
measured rate. The byte floor is reading X once (N D itemsize), plus y and the
parameters in and out; the epoch can be no faster than either:

    floor = max(flops / gemm_rate, min_bytes / copy_bandwidth)
"""

import time

import numpy as np


def n_params(d: int, h: int, k: int = 1) -> int:
    return d * h + h + h * k + k


def epoch_flops(n: int, d: int, h: int, steps: int = 1, k: int = 1) -> int:
    """FLOPs of an epoch over n rows in `steps` steps (1: full batch): the update runs per step."""
    return epoch_gemm_flops(n, d, h, k) + 5 * n * h + 20 * n * k + steps * 2 * n_params(d, h, k)


def epoch_gemm_flops(n: int, d: int, h: int, k: int = 1) -> int:
    return 4 * n * d * h + 6 * n * h * k


def epoch_min_bytes(n: int, d: int, h: int, itemsize: int, k: int = 1) -> int:
    return itemsize * (n * d + n + 2 * n_params(d, h, k))


def floor_seconds(n, d, h, itemsize, gemm_flops_per_s, bytes_per_s, steps: int = 1, k: int = 1) -> float:
    compute = epoch_flops(n, d, h, steps, k) / gemm_flops_per_s
    memory = epoch_min_bytes(n, d, h, itemsize, k) / bytes_per_s if bytes_per_s else 0.0
    return max(compute, memory)


# ----------------------------------------------------------------------------- probes


def timings(fn, sync=lambda: None, repeats: int = 5, warmup: int = 2) -> list[float]:
    """Seconds of each of `repeats` calls of fn(), after `warmup` untimed ones, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def probe(library: str, device: str, dtype: str) -> dict:
    """Measured GEMM rate (FLOP/s) of a large square product, and copy bandwidth (bytes/s),
    through `library` on `device`, best of 5 after 2 warm-ups."""
    rng = np.random.default_rng(0)
    gpu = device != "cpu"
    n = (8192 if gpu else 2048)
    A = rng.standard_normal((n, n)).astype(dtype)
    B = rng.standard_normal((n, n)).astype(dtype)
    copy_elems = (1 << 28 if gpu else 1 << 25) // np.dtype(dtype).itemsize  # 256 MiB / 32 MiB
    src = rng.standard_normal(copy_elems).astype(dtype)
    from mlp import backends

    b = backends.resolve(device, library)        # the device as mlp.train finds it, and its sync
    if library == "torch" and gpu:                 # parity with CuPy's default: no TF32 in a float32 product
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
    dA, dB, dsrc = b.asarray(A), b.asarray(B), b.asarray(src)
    ddst = b.xp.zeros_like(dsrc)
    copy = {"numpy": lambda: np.copyto(ddst, dsrc), "torch": lambda: ddst.copy_(dsrc)}.get(
        library, lambda: ddst.__setitem__(Ellipsis, dsrc))
    gemm = 2 * n**3 / min(timings(lambda: dA @ dB, b.synchronize))
    bandwidth = 2 * src.nbytes / min(timings(copy, b.synchronize))
    return {"library": library, "device": device, "dtype": dtype, "gemm_size": n,
            "gemm_flops_per_s": gemm, "copy_bytes_per_s": bandwidth}
