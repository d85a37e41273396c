"""Image stages, one plate per job (REFERENCE.md §1; CLI: ``python -m morphobench.images``).

Modules (import them directly; this ``__init__`` stays import-light):

:mod:`~morphobench.images.io`             image sheet rows → ``(C,H,W)`` float32 (``read_site``), illum files
:mod:`~morphobench.images.illum`          illumination functions (DeepProfiler's, or the JUMP pipeline's)
:mod:`~morphobench.images.segment`        nuclei + cells, label stores, ``match_instances`` (F1 at an IoU)
:mod:`~morphobench.images.identify`       CellProfiler's Identify modules re-implemented (``jump`` preset)
:mod:`~morphobench.images.crops`          cell crops / field tiles → zarr stores + parquet indexes
:mod:`~morphobench.images.features`       CellProfiler features with CellProfiler's names; well profiles
:mod:`~morphobench.images.texture`        Haralick texture of all objects at once (MeasureTexture)
:mod:`~morphobench.images.granularity`    granularity spectra of all compartments at once
:mod:`~morphobench.images.radial`         radial intensity distribution (geometry shared by channels)
:mod:`~morphobench.images.colocalization` RWC with CellProfiler's site-wide ranks
:mod:`~morphobench.images.synthetic`      small synthetic sites with known masks and fields (tests)
:mod:`~morphobench.images.cp_backend`     the CellProfiler backend (driver of ``cp_worker`` in its own env)
:mod:`~morphobench.images.parity`         both backends compared: features per group, objects, illumination
"""
