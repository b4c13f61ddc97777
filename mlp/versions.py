"""The versions of Python and of the libraries that a run used: recorded in checkpoints, metrics
and benchmark results."""

import platform

#: the distributions whose versions a checkpoint, the metrics and the benchmark record
VERSIONED = ("mlp-by-hand", "numpy", "array-api-compat", "cupy-cuda12x", "cupy-cuda13x", "torch", "jax", "jaxlib",
             "scikit-learn", "array-api-strict")


def versions() -> dict:
    """Python's version and those of the installed packages in VERSIONED."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
