"""The versions of Python and of the libraries that a run used: recorded in checkpoints, metrics
and benchmark results."""

import platform

#: the distributions whose versions a checkpoint, the metrics and the benchmark record
VERSIONED = ("mlp-by-hand", "numpy", "array-api-compat", "cupy-cuda12x", "cupy-cuda13x", "torch", "jax", "jaxlib",
             "scikit-learn", "array-api-strict")


def version(dist: str) -> str | None:
    """The installed version of the distribution `dist`, None when it is not installed."""
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def versions() -> dict:
    """Python's version and those of the installed packages in VERSIONED."""
    return {"python": platform.python_version(), **{d: v for d in VERSIONED if (v := version(d)) is not None}}
