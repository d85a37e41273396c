"""morphobench.evaluate: metrics (retrieval mAP, known-relationship recall, …).

Submodules: :mod:`~morphobench.evaluate.map` (copairs-equivalent mAP engine, a package),
:mod:`~morphobench.evaluate.retrieval` (JUMP retrieval tasks per condition, MAE-CVPR Table 4),
:mod:`~morphobench.evaluate.recall` (EFAAR-equivalent recall engine),
:mod:`~morphobench.evaluate.cp_regression` (CellProfiler-feature regression, MAE-CVPR §5.5) and
:mod:`~morphobench.evaluate.stages` (one function per results table, called by the rules).
"""
