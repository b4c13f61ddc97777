"""The hardware's limit for one epoch: operation and byte counts, and measured rates.

FLOPs of one full-batch epoch, N rows, D inputs, H hidden units (multiply-add = 2):

    X @ w1                  2 N D H         X.T @ d_z1          2 N D H
    a1 @ w2, a1.T @ d_z2    4 N H           elementwise (N, H)  ~7 N H   (bias, relu, outer
    elementwise (N, 1)      ~20 N                                         product, mask, sums)
    update                  2 (D H + 2 H + 1)

The matrix products dominate (D = 784), so the floor is the GEMM time at the device's
measured rate. The byte floor is reading X once (N D itemsize), plus y and the
parameters in and out; the epoch can be no faster than either:

    floor = max(flops / gemm_rate, min_bytes / copy_bandwidth)
"""

from __future__ import annotations

import time

import numpy as np


def epoch_flops(n: int, d: int, h: int) -> int:
    gemm = 4 * n * d * h + 4 * n * h
    elementwise = 7 * n * h + 20 * n
    update = 2 * (d * h + 2 * h + 1)
    return gemm + elementwise + update


def epoch_gemm_flops(n: int, d: int, h: int) -> int:
    return 4 * n * d * h + 4 * n * h


def epoch_min_bytes(n: int, d: int, h: int, itemsize: int) -> int:
    params = d * h + 2 * h + 1
    return itemsize * (n * d + n + 2 * params)


def floor_seconds(n, d, h, itemsize, gemm_flops_per_s, bytes_per_s) -> float:
    compute = epoch_flops(n, d, h) / gemm_flops_per_s
    memory = epoch_min_bytes(n, d, h, itemsize) / bytes_per_s if bytes_per_s else 0.0
    return max(compute, memory)


# ----------------------------------------------------------------------------- probes


def _best_rate(fn, sync, work: float, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return work / best


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
    if library == "numpy":
        dst = np.empty_like(src)
        gemm = _best_rate(lambda: A @ B, lambda: None, 2 * n**3)
        bandwidth = _best_rate(lambda: np.copyto(dst, src), lambda: None, 2 * src.nbytes)
    elif library == "cupy":
        import cupy

        dA, dB, dsrc = cupy.asarray(A), cupy.asarray(B), cupy.asarray(src)
        ddst = cupy.empty_like(dsrc)
        sync = cupy.cuda.get_current_stream().synchronize
        gemm = _best_rate(lambda: dA @ dB, sync, 2 * n**3)
        bandwidth = _best_rate(lambda: ddst.__setitem__(Ellipsis, dsrc), sync, 2 * dsrc.nbytes)
    elif library == "torch":
        import torch

        dev = torch.device(device)
        tA, tB, tsrc = (torch.tensor(a, device=dev) for a in (A, B, src))
        tdst = torch.empty_like(tsrc)
        sync = (lambda: torch.cuda.synchronize(dev)) if gpu else (lambda: None)
        if gpu:  # parity with CuPy's default: no TF32 in a float32 product
            torch.backends.cuda.matmul.allow_tf32 = False
        gemm = _best_rate(lambda: tA @ tB, sync, 2 * n**3)
        bandwidth = _best_rate(lambda: tdst.copy_(tsrc), sync, 2 * tsrc.nbytes)
    else:
        raise ValueError(f"no probe for {library}")
    return {"library": library, "device": device, "dtype": dtype, "gemm_size": n,
            "gemm_flops_per_s": gemm, "copy_bytes_per_s": bandwidth}
