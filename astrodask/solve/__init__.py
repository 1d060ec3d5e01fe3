"""The solve of one exposure, stage by stage (docs/algorithm.md).

- :mod:`~astrodask.solve.detect`: ``get_image_ij``, SEP detection, windowed centroids, stars told from artefacts;
- :mod:`~astrodask.solve.match`: the coarse alignment, the 24 regions (astroalign, proximity), ``mean_affine``;
- :mod:`~astrodask.solve.tpv`: the TAN + TPV model, its weighted fit and its FITS header;
- :mod:`~astrodask.solve.depth`: ``depth_match``;
- :mod:`~astrodask.solve.errmodel`: ``like_fit``, ``ERROR_THRESHOLD`` clipping, the chi-square;
- :mod:`~astrodask.solve.pipeline`: the stages in order, the quality gates, the failure diagnostics.

Every stage is a function of arrays and tables, with no Dask in it: :mod:`astrodask.run.graph`
calls the same functions as tasks.
"""
