"""Retrieval mean average precision (mAP) with copairs ≥ 0.5 semantics (REFERENCE.md §4).

Our own vectorized, memory-bounded engine — not a wrapper around copairs — whose numbers equal
copairs 0.5.5 (``copairs.map.average_precision`` + ``mean_average_precision``) on the same
profiles and pair definitions.

Definitions (as copairs)
------------------------
* A pair ``(i, j)``, ``i ≠ j``, is **positive** when the two profiles share every ``pos_sameby``
  value and differ in every ``pos_diffby`` value; **negative** likewise with ``neg_sameby`` /
  ``neg_diffby``. Each unordered pair is ranked in the lists of both of its profiles. A pair that
  satisfies both definitions is listed twice (once as positive, once as negative), as in copairs.
* Every profile with at least one pair is a *query*: its positive and negative pairs are ranked by
  similarity, descending. Similarities are cosines computed in float64 and stored as float32, and
  the sort key is ``float32(1 - s)``, exactly as copairs does (so values equal in float32 are ties);
  ties rank positives before negatives (copairs' stable ``lexsort`` over ``[positives, negatives]``).
* ``AP = (1/n_pos) Σ_{positive ranks k} TP(k)/k``; no positive pair → NaN.
* ``normalized_average_precision = (AP − μ0)/(1 − μ0)``, μ0 the expected AP of a random ranking
  (copairs ``normalize_ap``).
* Null per configuration ``(n_pos, n_total)``: ``null_size`` random rank lists (``n_pos`` positive
  positions drawn uniformly without replacement among ``n_total``) and their APs.
  ``p(AP) = (1 + #{null ≥ AP})/(1 + null_size)``.
* ``mAP`` per group (``sameby``) = mean AP of members with a valid AP (pandas' grouped mean, as
  copairs); group null = element-wise mean of the members' nulls (members sharing a configuration
  share its null row, as in copairs); ``p(mAP) = (1 + #{null > mAP})/(1 + null_size)`` (strict
  ``>``, copairs ``get_map_pvalue``); ``q`` = Benjamini–Hochberg (statsmodels ``fdr_bh``) over the
  evaluated groups; **fraction retrieved** = fraction of evaluated groups with ``q < threshold``
  (0.05).

Nulls and p-values (``null_method`` / ``method``)
-------------------------------------------------
``"copairs"`` — copairs 0.5.5 bit for bit, draws and arithmetic:

* configurations sorted as ``np.unique(confs, axis=0)``, per-configuration seeds
  ``default_rng(seed).integers(8096, size=n_confs)``, each rank list from ``Generator.permuted``
  of ``arange(n_total)``, null APs in float32 as copairs computes them;
* ``#{null ≥ AP}`` compares the float32 null with the float64 AP (``searchsorted`` on the sorted
  null); the group null is the float32 mean of the members' nulls in member row order, compared
  with ``float32(mAP)`` (copairs compares with the mAP as a Python float, which NumPy ≥ 2 / NEP 50
  casts to float32). Ties between a null value and an observed (m)AP — both rationals from the
  same discrete set, so exact ties are common (e.g. AP = 1, 1/2, 7/12 …) — are therefore decided by
  float32 rounding: copairs counts a tied null AP iff its float32 rounding is not below the
  float64 AP, and a tied group-null mean only if float32 rounding lifts it above
  ``float32(mAP)``.
* Caveat (a copairs property, not ours): copairs caches nulls on disk under
  ``~/.copairs/seed{seed}/ns{null_size}/n{total}_k{pos}.npy`` keyed without the per-configuration
  seed, so copairs' numbers depend on what earlier runs left in that cache; ours equal copairs run
  with an empty cache.

``"fast"`` (default) — the same definitions with exact tie semantics, and much faster:

* Draws: every configuration's null is a function of ``(seed, n_pos, n_total)`` only (never of
  which other configurations are present): 32-bit words from its own stream
  ``PCG64(SeedSequence([seed, n_pos, n_total]))`` drive Floyd's algorithm — step t of a list draws
  ``r = (w·(J+1)) >> 32`` uniform on [0, J], ``J = n_total − n_pos + t``, and takes J instead when
  r is already drawn — which yields a uniform ``n_pos``-subset (up to the 2^-32 granularity of
  the multiply-shift). Configurations with the same ``n_pos ≤ 8`` are drawn in one vectorized
  batch (positions compared directly). Beyond 8 positives: rejection sampling of sorted distinct
  positions when they are sparse (``n_pos(n_pos−1) ≤ n_total``), else Floyd's algorithm on a
  bitmap per list (the same draws and positions as the batches would give), or for huge lists a
  random-key partial sort — the choice depending on ``(n_pos, n_total)`` only. Same distribution
  as copairs, different random numbers: p-values agree within Monte-Carlo error.
* Null APs are float64, computed with exactly the operations of the observed AP
  (``(i+1)/(pos_i+1)`` correctly rounded, summed in rank order, then ``/ n_pos``), so identical
  rank lists give bitwise identical values.
* Ties: values closer than ``ε = max(2^-40, n·2^-50)`` (``n`` = number of terms: ``n_pos + 2`` for
  AP, ``max n_pos + m + 1`` for the mean of m members) are equal: ``#{null ≥ AP}`` counts
  ``null ≥ AP − ε`` and ``#{null > mAP}`` counts ``null > mAP + ε``. Both sides are float64
  evaluations of rationals with a rounding error below ``n·2^-52`` (≪ ε), so exactly equal values
  always tie (distinct rank lists often give the same rational, e.g. 7/12 from positions {0, 11}
  and {1, 2}, whose float64 values can differ by an ulp); distinct values closer than ε would also
  tie — none exist for small configurations (exhaustively, n_pos ≤ 4 with n_total ≤ 40 and
  n_pos = 5 with n_total ≤ 30: distinct APs differ by ≥ 2.6e-10).
* Counting is exact without materializing group nulls: ``#{null ≥ t}`` per profile from a
  histogram of the null plus a sort of the few values sharing a bin with a threshold; per group,
  whole groups are decided from the members' null minima/maxima, the others by summing
  integer-floored nulls ``⌊null·2^b⌋`` (uint16; the float64 sum is bracketed within m/2^b) in
  chunks, re-summing in float64 only the samples whose bracket contains the threshold.
* Injected nulls (``nulls=``) are compared as given, with the method's arithmetic: copairs'
  float32 draws reproduce copairs with ``method="copairs"``.

``nulls=``: inject null AP samples yourself — a mapping ``{(n_pos, n_total): array}`` or a
callable ``(n_pos, n_total) -> array`` (e.g. copairs' own ``null_dists``, or :func:`null_table`'s
output to share one set of draws between :func:`ap_p_values` and :func:`mean_average_precision`).

Documented skips (never a silent number)
----------------------------------------
* A query without positive pairs (e.g. a perturbation with a single replicate) gets
  ``average_precision = NaN`` and ``skip_reason = "no positive pairs"``; a group none of whose
  members has a valid AP is listed by :func:`mean_average_precision` with NaN mAP/p/q and a
  ``skip_reason``; such groups are excluded from BH and from the fraction retrieved.
* A query with positives but **no negative pairs** (e.g. no negative controls on its plate):
  copairs reports AP = 1 (and p = 1). ``no_negatives="skip"`` (default) records
  ``skip_reason = "no negative pairs"`` and sets AP to NaN; ``"error"`` raises; ``"keep"`` keeps
  copairs' AP = 1.
* NaN/inf features raise :class:`MorphobenchError` naming the column; zero-norm profiles raise
  (cosine undefined); missing values in a pairing column raise naming the column.

Computation and memory: queries are processed in blocks whose pair count is bounded
(``max_entries``), never an n × n matrix (unless a definition has no ``sameby``, in which case
every profile is a candidate and a block holds ``block × n`` similarities, still bounded by
``max_entries``). Positive pairs inside small groups come from one small Gram matrix per group;
negatives come as dense (queries sharing their candidates) × (candidates) GEMM blocks whose keys
fill a padded per-query table (non-pairs masked), or as entry lists when they are scattered.
Big negative-pair groups made mostly of queries (the dense, sibling-style design) are counted
from symmetric tiles of their similarity matrix against float64 thresholds derived from the
positives' keys — float32 GEMM tiles counted by a compiled (numba) kernel, the entries within the
float32 error bound of a threshold decided by their float64 similarity, so the counts are exact —
and their queries with many positives rank sorted rows of the group's float64 GEMM. The compiled
kernels (also the Floyd steps of many-positive nulls) load once per process (about a second,
:func:`load_kernels`); a call loads them only when they save more than that, and without numba
the NumPy paths give the same results.
Small GEMMs run on one BLAS thread; the NumPy-heavy loops (GEMM blocks, null batches, counting)
run in a small thread pool — ``MORPHOBENCH_MAP_THREADS`` (default: usable CPUs, at most 4) sets
its size, 1 disables it. Results do not depend on it.
Not implemented: copairs' ``multilabel`` variants and query-string column filters.

Layout (one job per module, as copairs lays out the same ideas)
----------------------------------------------------------------
* :mod:`~morphobench.evaluate.map.pairs` — pair definitions (``sameby`` / ``diffby``): counts,
  enumeration, dense blocks;
* :mod:`~morphobench.evaluate.map.similarity` — unit rows, cosine backends (numpy / torch), rank keys;
* :mod:`~morphobench.evaluate.map.average_precision` — AP per profile, expected / normalized AP;
* :mod:`~morphobench.evaluate.map.nulls` — null draws per ``(n_pos, n_total)``;
* :mod:`~morphobench.evaluate.map.significance` — p-values, mAP per group, BH q-values,
  fraction retrieved;
* :mod:`~morphobench.evaluate.map.tasks` — profile-table entry points (retrieval designs);
* :mod:`~morphobench.evaluate.map.options` — :class:`MapOptions` (how, never what), threads.
"""


from morphobench.evaluate.map.average_precision import average_precision, expected_ap, normalize_ap
from morphobench.evaluate.map.nulls import (
    DEFAULT_NULL_SIZE,
    NullSource,
    null_ap_from_ranks,
    null_distributions,
    null_table,
)
from morphobench.evaluate.map.options import DEFAULT_OPTIONS, MapOptions, load_kernels
from morphobench.evaluate.map.significance import (
    ap_p_values,
    benjamini_hochberg,
    fraction_retrieved,
    mean_average_precision,
    summarize_map,
)
from morphobench.evaluate.map.tasks import RetrievalResult, replicate_retrieval, retrieval

__all__ = [
    "DEFAULT_NULL_SIZE",
    "DEFAULT_OPTIONS",
    "MapOptions",
    "NullSource",
    "load_kernels",
    "average_precision",
    "expected_ap",
    "normalize_ap",
    "ap_p_values",
    "null_distributions",
    "null_table",
    "null_ap_from_ranks",
    "mean_average_precision",
    "benjamini_hochberg",
    "fraction_retrieved",
    "summarize_map",
    "retrieval",
    "replicate_retrieval",
    "RetrievalResult",
]
