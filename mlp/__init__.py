"""mlp-by-hand: a two-layer MLP with a hand-written backward pass, written once against the array API.

The repository keeps `backends/` and `bench/` beside `mlp/`; `pip install` puts them inside this
package, as `mlp.backends` and `mlp.bench` (pyproject's package-dir), so no generic top-level names
land in site-packages. Run from a checkout, the checkout's root joins this package's path, so the
same names resolve to those folders there too.
"""

import os as _os

_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if all(_os.path.isfile(_os.path.join(_checkout, *p)) for p in
       (("pyproject.toml",), ("backends", "__init__.py"), ("bench", "__init__.py"))):
    __path__.append(_checkout)
