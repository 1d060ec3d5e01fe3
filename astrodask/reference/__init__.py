"""Reference stars: Gaia DR3 from catalog files, the Gaia archive, and the shared tile cache.

- :mod:`~astrodask.reference.catalog`: catalog files in any format, their columns and units, proper motions;
- :mod:`~astrodask.reference.footprint`: an exposure's footprint, the cuts to it and to the depth, ``get_gaia_xy``;
- :mod:`~astrodask.reference.archive`: the Gaia archive (ADQL, asynchronous TAP jobs, retries);
- :mod:`~astrodask.reference.healpix`: HEALPix in both directions, the tiles under a cone or a footprint;
- :mod:`~astrodask.reference.store`: the zarr tile store (``TileCache``) and field reads (``read_field``);
- :mod:`~astrodask.reference.fill`: filling tiles from a catalog file or from the archive.
"""
