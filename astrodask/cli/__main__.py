"""``python -m astrodask.cli``: the ``astrodask`` command."""

from astrodask.cli import run

run()
