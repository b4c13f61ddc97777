"""mlp-by-hand: a two-layer MLP with a hand-written backward pass, written once against the array API.

The repository keeps `backends/` and `bench/` beside `mlp/`; installing it (`pip install -e .` in a
checkout) puts them inside this package, as `mlp.backends` and `mlp.bench`.
"""
