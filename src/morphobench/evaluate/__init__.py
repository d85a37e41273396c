"""morphobench.evaluate: metrics (retrieval mAP, known-relationship recall, …).

Submodules: :mod:`~morphobench.evaluate.map` (copairs-equivalent mAP engine, a package),
:mod:`~morphobench.evaluate.recall` (EFAAR-equivalent recall engine), and others.
"""
