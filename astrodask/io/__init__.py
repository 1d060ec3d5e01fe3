"""Exposures in, solutions out.

- :mod:`~astrodask.io.exposure`: reading an exposure (FITS, ``.fits.fz``, any HDU), its pointing, epoch and
  approximate WCS;
- :mod:`~astrodask.io.dss`: DSS plate-scan headers (the plate solution fitted as a TAN);
- :mod:`~astrodask.io.output`: the solution file (``RA---TPV``), the summary, matched lists, plots, diagnostics.
"""
