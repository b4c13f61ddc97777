"""`python -m bench` (from a checkout) and `python -m mlp.bench` (anywhere): see bench/cli.py."""

from mlp.bench.cli import cli

cli()
