"""The ``astrodask`` command (also ``dask astrodask``): a click group with one small module per family.

========================  ==========================================================================
:mod:`.options`           the options the commands share, config loading, logging, per-file errors
:mod:`.files`             ``config``, ``info``, ``detect``, ``catalog import``, ``gaia``
:mod:`.simulate`          ``simulate``, ``demo``
:mod:`.solve`             ``solve``, ``submit``, ``status``, ``task``
:mod:`.cache`             ``cache import``, ``cache info``, ``cache prefetch``
========================  ==========================================================================

The CLI is the only place that configures logging and reads YAML files and the
environment. Expected errors (:class:`~astrodask.errors.AstrodaskError`) become one
line on stderr naming the file and the problem, and a non-zero exit status; with
several files, a failed file is reported and the others go on (exit status
:data:`EXIT_PARTIAL`).
"""

from __future__ import annotations

import atexit
import gc

import click

from astrodask import __version__
from astrodask.cli import cache, files, simulate, solve
from astrodask.cli.options import EXIT_PARTIAL, AstrodaskGroup, load_config

__all__ = ["EXIT_PARTIAL", "load_config", "main", "run"]


@click.group(name="astrodask", cls=AstrodaskGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="astrodask")
def main() -> None:
    """astrodask: astrometric calibration of wide-field survey exposures (TAN + TPV against Gaia DR3).

    \b
    Start with 'astrodask demo': it simulates a Condor-like exposure with known
    truth and runs the pipeline on it, with no network.
    """


for _family in (files, simulate, solve, cache):
    for _command in _family.COMMANDS:
        main.add_command(_command)
del _family, _command


def run() -> None:
    """``astrodask`` as a program (the console script, ``python -m astrodask.cli``): :func:`main`, and at
    exit the garbage collector told to leave alone what the process holds (:func:`gc.freeze`).

    The interpreter's last full collection walks every object of the scientific stack (about 1,500
    modules): 0.6 s of a 6 s solve, to free memory the process hands back to the system anyway.
    Every file is closed by then. Not for a process that goes on after the command: tests call
    :func:`main`.
    """
    atexit.register(gc.freeze)  # registered first, so run last: after every other exit handler
    main()
