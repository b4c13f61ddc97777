"""mlp-by-hand: a two-layer MLP with a hand-written backward pass, written once against the array API.

The repository keeps `backends/` and `bench/` beside `mlp/`; installing it (`pip install -e .` in a
checkout) puts them inside this package, as `mlp.backends` and `mlp.bench`. `mlp.MLPClassifier`
(mlp/estimator.py) is imported on first use, so `import mlp` stays light.
"""


def __getattr__(name: str):
    if name == "MLPClassifier":
        from .estimator import MLPClassifier

        return MLPClassifier
    raise AttributeError(f"module 'mlp' has no attribute {name!r}")
