"""Image stages, one plate per job (REFERENCE.md §1; CLI: ``python -m morphobench.images``).

Modules (import them directly; this ``__init__`` stays import-light):

:mod:`~morphobench.images.io`        image sheet rows → ``(C,H,W)`` float32 (``read_site``), illum files
:mod:`~morphobench.images.illum`     retrospective illumination functions (Singh et al. 2014)
:mod:`~morphobench.images.segment`   nuclei + cells (IdentifyPrimary/SecondaryObjects), label stores,
                                     ``match_instances`` (F1 at an IoU threshold)
:mod:`~morphobench.images.crops`     cell crops / field tiles → zarr stores + parquet indexes
:mod:`~morphobench.images.features`  CellProfiler features via cp-measure, renamed; well profiles
:mod:`~morphobench.images.synthetic` small synthetic sites with known masks and fields (tests)
:mod:`~morphobench.images.cp_backend` the optional CellProfiler backend for illum/segment
"""
