"""Campfire's linear probes (Campfire §3.2–3.4, Tables 3.1–3.2, Fig. 3.4; REFERENCE §4).

Single cells are sampled once per dataset from a Campfire split (:func:`sample_probe_cells`):
up to 100 cells per control well and 30 per held-out-compound well (fewer when fewer exist),
seeded per well. Each method gives every sampled cell a vector (:func:`cell_vectors`): its own
row for cell-level methods, else the row of the tile, site or well that holds the cell (a
well-level method such as ``random`` gives all cells of a well the same vector).

Tasks (rows of ``results/campfire_probes.tsv``):

* **A** — which control compound. The sampled control cells of ``train`` wells are split into
  ``n_subsets`` (10) disjoint subsets (stratified by class, seeded); one probe per subset,
  early-stopped on the ``val`` wells' control cells, tested on ``test`` (ID plates) and
  ``test_out_plate`` (OOD plates) control cells.
* **B** — which held-out compound. The cells of ``test_out_compound`` wells (ID plates) go to
  ``n_folds`` (5) folds **grouped by well** (stratified by compound); for fold k the probe trains on
  the folds other than k and k+1, early-stops on fold k+1 and is tested on fold k
  (``test_out_compound``) and on every ``test_out_all`` cell (OOD plates).

The probe (:func:`fit_linear_probe`): features standardized with the training cells' mean and sd,
one linear layer, cross-entropy, AdamW (lr 1e-3, wd 1e-2; the paper names no optimizer), mini-batches
of 32 (the public Campfire config; small data sets need a larger lr or smaller batches to converge
within the epochs: the simulated screen's config uses lr 1e-2 and batches of 16),
at most ``max_epochs`` (100) epochs, the weights of the epoch with the best **validation** accuracy
(first best on ties), stopping after ``patience`` (25, the public Campfire config) epochs without
improvement. Test cells are handed over sealed (:class:`SealedTestSet`): they can only be read with a
probe whose training is finished, so no choice (epoch, weights, stopping) can see them. The public
Campfire code early-stops on the test fold and splits folds by cell; this module does neither.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from morphobench.data.tables import WELL_KEYS, feature_columns
from morphobench.io import MorphobenchError, progress, read_table, write_parquet, write_tsv

log = logging.getLogger("morphobench.evaluate.probes")

#: probe table columns (after dataset, method)
PROBE_COLUMNS = ["channel_set", "task", "subset_or_fold", "test_split", "n_train", "n_val", "n_test",
                 "n_classes", "majority", "best_epoch", "accuracy", "balanced_accuracy"]
#: the channel set label of a method's own embeddings (as profiled)
DEFAULT_SET = "default"
CELL_KEYS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")


@dataclass(frozen=True)
class ProbeConfig:
    """Probe training (``evaluate.campfire_probes`` in the config)."""

    max_epochs: int = 100
    patience: int = 25
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    standardize: bool = True
    seed: int = 0

    def check(self) -> None:
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise MorphobenchError("evaluate.campfire_probes: max_epochs, patience and batch_size must be ≥ 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise MorphobenchError("evaluate.campfire_probes: lr must be > 0 and weight_decay ≥ 0")


# ------------------------------------------------------------------------------------------------
# The probe and its sealed test sets
# ------------------------------------------------------------------------------------------------
class SealedTestSet:
    """Test features and labels that only a finished probe may read (:meth:`read`)."""

    def __init__(self, name: str, x: np.ndarray, y: np.ndarray):
        self.name = name
        self._x, self._y = x, y
        self.reads = 0

    def __len__(self) -> int:
        return len(self._y)

    def read(self, probe: LinearProbe) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(probe, LinearProbe) or not probe.final:
            raise MorphobenchError(f"probe test set {self.name!r} read before the probe's training finished "
                                   "(test data may only be used for the final evaluation)")
        self.reads += 1
        return self._x, self._y


class LinearProbe:
    """A trained linear classifier (standardization + weights); ``final`` once training ended."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                 classes: np.ndarray, best_epoch: int, history: list[float]):
        self.mean, self.scale, self.weight, self.bias = mean, scale, weight, bias
        self.classes = classes
        self.best_epoch = best_epoch
        self.history = history
        self.final = False

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.weight.T + self.bias
        return self.classes[np.argmax(z, axis=1)]


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import balanced_accuracy_score

    if len(y_true) == 0:
        return float("nan"), float("nan")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes predicted but absent from y_true
        bal = float(balanced_accuracy_score(y_true, y_pred))
    return float(np.mean(y_true == y_pred)), bal


def fit_linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     cfg: ProbeConfig = ProbeConfig()) -> LinearProbe:
    """Train a linear probe on (x_train, y_train), early-stopped on validation accuracy only
    (module docstring). Labels are any hashable values; validation labels unseen in training
    count as errors."""
    import torch

    cfg.check()
    if len(y_train) == 0:
        raise MorphobenchError("linear probe: no training cells")
    if len(y_val) == 0:
        raise MorphobenchError("linear probe: no validation cells (early stopping needs validation data, "
                               "never the test data)")
    classes = np.array(sorted(set(y_train.tolist())), dtype=object)
    code = {c: i for i, c in enumerate(classes)}
    yt = torch.as_tensor([code[c] for c in y_train], dtype=torch.long)
    x_train = np.asarray(x_train, np.float64)
    mean = x_train.mean(0) if cfg.standardize else np.zeros(x_train.shape[1])
    scale = x_train.std(0) if cfg.standardize else np.ones(x_train.shape[1])
    scale = np.where(scale > 1e-12, scale, 1.0)
    xt = torch.as_tensor((x_train - mean) / scale, dtype=torch.float32)
    xv = torch.as_tensor((np.asarray(x_val, np.float64) - mean) / scale, dtype=torch.float32)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    layer = torch.nn.Linear(xt.shape[1], len(classes))
    opt = torch.optim.AdamW(layer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_epoch, best_state, since, history = -1.0, 0, None, 0, []
    y_val_arr = np.asarray(y_val, dtype=object)
    for epoch in range(1, cfg.max_epochs + 1):
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(layer(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = classes[layer(xv).argmax(1).numpy()]
        acc = float(np.mean(pred == y_val_arr))
        history.append(acc)
        if acc > best:
            best, best_epoch, since = acc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        else:
            since += 1
            if since >= cfg.patience:
                break
    layer.load_state_dict(best_state)
    probe = LinearProbe(mean, scale, layer.weight.detach().numpy().astype(np.float64),
                        layer.bias.detach().numpy().astype(np.float64), classes, best_epoch, history)
    return probe


def run_probe(x_train, y_train, x_val, y_val, tests: Sequence[SealedTestSet],
              cfg: ProbeConfig = ProbeConfig()) -> list[dict]:
    """Fit one probe, then (only then) evaluate it on each sealed test set; one dict per test set."""
    probe = fit_linear_probe(x_train, y_train, x_val, y_val, cfg)
    probe.final = True
    rows = []
    for t in tests:
        x, y = t.read(probe)
        acc, bal = _accuracy(np.asarray(y, dtype=object), probe.predict(np.asarray(x, np.float64)))
        yy = pd.Series(np.asarray(y, dtype=object))
        maj = float(yy.value_counts(normalize=True).iloc[0]) if len(yy) else float("nan")
        rows.append({"test_split": t.name, "n_train": len(y_train), "n_val": len(y_val), "n_test": len(y),
                     "n_classes": len(probe.classes), "best_epoch": probe.best_epoch,
                     "accuracy": acc, "balanced_accuracy": bal, "majority": maj})
    return rows


# ------------------------------------------------------------------------------------------------
# Cells
# ------------------------------------------------------------------------------------------------
def _well_seed(seed: int, plate: str, well: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{plate}|{well}".encode()).digest()[:8], "little")


def sample_probe_cells(index: pd.DataFrame, split: pd.DataFrame, controls: Sequence[str], *,
                       control_cells: int = 100, heldout_cells: int = 30, seed: int = 0) -> pd.DataFrame:
    """Cells of the probe tasks from a crop index and a Campfire split table (module docstring).

    Returns the index rows of the sampled cells with ``split``, ``task`` (``A`` control /
    ``B`` held-out compound) and ``probe_class`` (the perturbation). Control wells of every split but
    ``unused`` are sampled (task A uses train/val/test/test_out_plate), and held-out compound wells
    (``test_out_compound``, ``test_out_all``)."""
    if "split_kind" in split.columns and set(split["split_kind"].astype(str)) != {"campfire"}:
        raise MorphobenchError("campfire probes need a campfire split table (splits/campfire.tsv)")
    keys = list(WELL_KEYS)
    lab = split[keys + ["Metadata_Perturbation", "split"]].copy()
    lab[keys] = lab[keys].astype(str)
    idx = index.copy()
    idx[keys] = idx[keys].astype(str)
    rows = idx.merge(lab, on=keys, how="left", validate="many_to_one")
    if rows["split"].isna().any():
        miss = rows.loc[rows["split"].isna(), keys].drop_duplicates().head(3).to_dict("records")
        raise MorphobenchError(f"campfire probes: crops of wells missing from the split table, e.g. {miss}")
    ctrl = set(map(str, controls))
    is_ctrl = rows["Metadata_Perturbation"].astype(str).isin(ctrl) & rows["split"].isin(
        ["train", "val", "test", "test_out_plate"])
    is_held = rows["split"].isin(["test_out_compound", "test_out_all"])
    rows["task"] = np.where(is_ctrl, "A", np.where(is_held, "B", ""))
    rows = rows[rows["task"] != ""]
    order_cols = [c for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "ObjectNumber") if c in rows.columns]
    rows = rows.sort_values(order_cols, kind="stable").reset_index(drop=True)  # sampling ignores the index order
    picked = []
    for (plate, well), grp in rows.groupby(keys, sort=True):
        cap = control_cells if grp["task"].iat[0] == "A" else heldout_cells
        order = np.random.default_rng(_well_seed(seed, plate, well)).permutation(len(grp))
        picked.append(grp.iloc[np.sort(order[:cap])])
    if not picked:
        raise MorphobenchError("campfire probes: no control or held-out-compound cells in the crops")
    out = pd.concat(picked, ignore_index=True)
    out["probe_class"] = out["Metadata_Perturbation"].astype(str)
    return out


# ------------------------------------------------------------------------------------------------
# A method's vectors for the sampled cells
# ------------------------------------------------------------------------------------------------
def _keys_str(df: pd.DataFrame, cols: Sequence[str]) -> pd.Series:
    return df[list(cols)].astype(str).agg("|".join, axis=1)


def cell_rows(cells: pd.DataFrame, rows: pd.DataFrame, level: str, *, tile_size: int | None = None,
              source: str = "method rows") -> np.ndarray:
    """Position in ``rows`` of the row holding each of ``cells`` (NaN: none) at ``level``: ``cell``
    (same site and ``ObjectNumber``), ``tile`` (the tile of the site whose [X0, X0 + tile_size) ×
    [Y0, Y0 + tile_size) holds the cell centre), ``site`` or ``well``. ``rows`` carry the
    embeddings' keys (``Metadata_ObjectNumber``, ``Metadata_Crop_X0/Y0``)."""
    if level == "cell":
        if "Metadata_ObjectNumber" not in rows.columns:
            raise MorphobenchError(f"{source}: cell rows need Metadata_ObjectNumber")
        rk = _keys_str(rows, [*CELL_KEYS, "Metadata_ObjectNumber"])
        ck = _keys_str(cells.assign(Metadata_ObjectNumber=cells["ObjectNumber"]), [*CELL_KEYS, "Metadata_ObjectNumber"])
        if rk.duplicated().any():
            raise MorphobenchError(f"{source}: several rows for one cell")
        hit = ck.map(pd.Series(np.arange(len(rows)), index=rk.to_numpy()))
    elif level in ("site", "well"):
        cols = CELL_KEYS if level == "site" else WELL_KEYS
        rk = _keys_str(rows, cols)
        if rk.duplicated().any():
            raise MorphobenchError(f"{source}: several rows per {level}")
        hit = _keys_str(cells, cols).map(pd.Series(np.arange(len(rows)), index=rk.to_numpy()))
    elif level == "tile":
        if not tile_size:
            raise MorphobenchError(f"{source}: tile rows need the tile size")
        for c in ("Metadata_Crop_X0", "Metadata_Crop_Y0"):
            if c not in rows.columns:
                raise MorphobenchError(f"{source}: tile rows need {c}")
        by_site = {k: g for k, g in pd.DataFrame({
            "_k": _keys_str(rows, CELL_KEYS).to_numpy(), "_i": np.arange(len(rows)),
            "x0": rows["Metadata_Crop_X0"].to_numpy(), "y0": rows["Metadata_Crop_Y0"].to_numpy()}).groupby("_k")}
        hit = np.full(len(cells), np.nan)
        ck = _keys_str(cells, CELL_KEYS).to_numpy()
        cx, cy = cells["Crop_CenterX"].to_numpy(), cells["Crop_CenterY"].to_numpy()
        for i in range(len(cells)):
            g = by_site.get(ck[i])
            if g is None:
                continue
            inside = ((g["x0"] <= cx[i]) & (cx[i] < g["x0"] + tile_size)
                      & (g["y0"] <= cy[i]) & (cy[i] < g["y0"] + tile_size)).to_numpy()
            if inside.any():
                hit[i] = g["_i"].to_numpy()[inside][0]
    else:
        raise MorphobenchError(f"{source}: unknown level {level!r}")
    return pd.Series(hit).to_numpy(dtype=float)


def cell_vectors(cells: pd.DataFrame, rows: pd.DataFrame, level: str, *, tile_size: int | None = None,
                 source: str = "method rows") -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n_cells, D), present mask) of ``cells`` from a method's ``rows`` at ``level``
    (:func:`cell_rows`): a well-level method gives every cell of a well its well's vector."""
    feats = feature_columns(rows)
    if not feats:
        raise MorphobenchError(f"{source}: no feature columns")
    hit = cell_rows(cells, rows, level, tile_size=tile_size, source=source)
    present = np.isfinite(hit)
    out = np.zeros((len(cells), len(feats)))
    out[present] = rows[feats].to_numpy(np.float64)[hit[present].astype(int)]
    return out, present


# ------------------------------------------------------------------------------------------------
# The tasks
# ------------------------------------------------------------------------------------------------
def _stratified_subsets(labels: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` disjoint subsets of equal size (±1 per class) of the positions, stratified by label."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(n)]
    offset = 0
    for lab in sorted(set(labels.tolist())):
        pos = np.flatnonzero(labels == lab)[rng.permutation(int((labels == lab).sum()))]
        for j, p in enumerate(pos):
            parts[(offset + j) % n].append(int(p))
        offset += len(pos)
    return [np.sort(np.asarray(p, dtype=int)) for p in parts]


def grouped_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each cell: ``n_folds`` folds grouped by ``groups`` (wells: a well is never split),
    stratified by label as far as the groups allow (scikit-learn ``StratifiedGroupKFold``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(groups.tolist()))
    if n_groups < n_folds:
        raise MorphobenchError(f"campfire probes task B: {n_groups} held-out-compound wells cannot fill "
                               f"{n_folds} folds grouped by well (evaluate.campfire_probes.n_folds)")
    import warnings

    fold = np.full(len(labels), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes with fewer groups than folds
        cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for k, (_, test) in enumerate(cv.split(np.zeros(len(labels)), labels, groups)):
            fold[test] = k
    return fold


def probe_tasks(x: np.ndarray, cells: pd.DataFrame, *, n_subsets: int = 10, n_folds: int = 5,
                cfg: ProbeConfig = ProbeConfig(), desc: str = "probes") -> pd.DataFrame:
    """Tasks A and B on vectors ``x`` of ``cells`` (from :func:`sample_probe_cells`; rows whose vector
    is missing must already be removed). One row per probe × test split."""
    if n_subsets < 1 or n_folds < 3:
        raise MorphobenchError("evaluate.campfire_probes: n_subsets must be ≥ 1 and n_folds ≥ 3 "
                               "(test, validation and training folds)")
    rows = []
    task = cells["task"].to_numpy()
    split = cells["split"].to_numpy()
    label = cells["probe_class"].to_numpy(dtype=object)
    jobs = []
    # task A: control compounds
    a = task == "A"
    tr = np.flatnonzero(a & (split == "train"))
    va = np.flatnonzero(a & (split == "val"))
    tests_a = [("test", np.flatnonzero(a & (split == "test"))),
               ("test_out_plate", np.flatnonzero(a & (split == "test_out_plate")))]
    if len(tr) and len(va):
        for i, sub in enumerate(_stratified_subsets(label[tr], n_subsets, cfg.seed)):
            if len(sub):
                jobs.append(("A", i, tr[sub], va, tests_a))
    else:
        log.warning("%s: task A skipped: %d training and %d validation control cells", desc, len(tr), len(va))
    # task B: held-out compounds, folds grouped by well
    b_id = np.flatnonzero((task == "B") & (split == "test_out_compound"))
    b_ood = np.flatnonzero((task == "B") & (split == "test_out_all"))
    if len(b_id):
        wells = _keys_str(cells.iloc[b_id], WELL_KEYS).to_numpy()
        fold = grouped_folds(label[b_id], wells, n_folds, cfg.seed)
        for k in range(n_folds):
            te, vk = b_id[fold == k], b_id[fold == (k + 1) % n_folds]
            trk = b_id[(fold != k) & (fold != (k + 1) % n_folds)]
            jobs.append(("B", k, trk, vk, [("test_out_compound", te), ("test_out_all", b_ood)]))
    else:
        log.warning("%s: task B skipped: no held-out-compound cells on ID plates", desc)
    for name, i, trn, val, tests in progress(jobs, desc=desc):
        sealed = [SealedTestSet(t, x[idx], label[idx]) for t, idx in tests]
        for r in run_probe(x[trn], label[trn], x[val], label[val], sealed, cfg):
            rows.append({"task": name, "subset_or_fold": i, **r})
    return pd.DataFrame(rows)


def wilson_interval(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``p`` observed on ``n`` trials."""
    if n <= 0 or not np.isfinite(p):
        return float("nan"), float("nan")
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(centre - half), float(centre + half)


def summarize(table: pd.DataFrame, by: Sequence[str] = ("dataset", "method", "channel_set", "task", "test_split"),
              ) -> pd.DataFrame:
    """Per (…, task, test split): mean, sd and a 95 % t-interval over the subsets/folds (the spread of
    the probes), and ``*_cells_ci_low/high``: the 95 % Wilson interval of the mean on the ``n_test``
    test cells of a run (the test-sampling error; cells of one well are correlated, so it is
    optimistic when the test set has few wells). ``chance`` = 1 / number of classes: the level of
    balanced accuracy for a classifier that ignores its input (plain accuracy on an imbalanced test
    set can exceed it by always answering the majority class; ``majority`` is that rate)."""
    from scipy import stats

    out = []
    by = [c for c in by if c in table.columns]
    for key, g in table.groupby(by, sort=True):
        rec = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        rec["n_runs"] = len(g)
        for m in ("accuracy", "balanced_accuracy"):
            v = g[m].dropna().to_numpy(float)
            mean = float(v.mean()) if len(v) else float("nan")
            sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
            half = float(stats.t.ppf(0.975, len(v) - 1) * sd / np.sqrt(len(v))) if len(v) > 1 else float("nan")
            lo, hi = wilson_interval(mean, int(round(g["n_test"].mean())))
            rec.update({f"{m}_mean": mean, f"{m}_sd": sd, f"{m}_ci_low": mean - half, f"{m}_ci_high": mean + half,
                        f"{m}_cells_ci_low": lo, f"{m}_cells_ci_high": hi})
        rec["chance"] = 1.0 / float(g["n_classes"].max())
        if "majority" in g.columns:
            rec["majority"] = float(g["majority"].max())
        rec["n_test"] = int(g["n_test"].max())
        out.append(rec)
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------
def probe_cells_stage(index_path: str | os.PathLike, split_path: str | os.PathLike, out: str | os.PathLike, *,
                      controls: Sequence[str] | None = None, control_cells: int = 100, heldout_cells: int = 30,
                      seed: int = 0) -> pd.DataFrame:
    """``results/{dataset}/campfire/cells.parquet``: the probe cells of a dataset."""
    from morphobench.training.data import index_rows
    from morphobench.training.splits import campfire_controls, read_split

    split = read_split(split_path, 0)
    ctrl = campfire_controls(split, controls)
    cells = sample_probe_cells(index_rows(index_path), split, ctrl, control_cells=control_cells,
                               heldout_cells=heldout_cells, seed=seed)
    write_parquet(cells, out)
    counts = cells.groupby(["task", "split"]).size().to_dict()
    log.info("campfire probe cells: %d (%s) from %d wells; controls %s", len(cells), counts,
             cells.groupby(list(WELL_KEYS)).ngroups, ctrl)
    return cells


def _tile_size(crops_index: str | os.PathLike | None) -> int | None:
    if not crops_index:
        return None
    from morphobench.training.data import CropSet, index_rows

    rows = index_rows(crops_index)
    if rows.empty:
        return None
    return int(CropSet(rows.head(1))._array(0).shape[-1])


def method_rows(path: str | os.PathLike, name: str) -> pd.DataFrame:
    rows = read_table(path, what=f"method {name} rows")
    missing = [c for c in WELL_KEYS if c not in rows.columns]
    if missing:
        raise MorphobenchError(f"method {name}: {path} has no {missing} column(s)")
    return rows


def probes_stage(cells_path: str | os.PathLike, rows_path: str | os.PathLike, level: str,
                 key: Mapping[str, str], out: str | os.PathLike, *, channel_sets_path: str | os.PathLike | None = None,
                 crops_index: str | os.PathLike | None = None, n_subsets: int = 10, n_folds: int = 5,
                 cfg: ProbeConfig = ProbeConfig()) -> pd.DataFrame:
    """One method's probe rows (``results/{dataset}/eval/{method}/campfire_probes.tsv``): its own
    embeddings (``channel_set = default``) and, when ``channel_sets_path`` holds rows, every channel
    set a channel-agnostic model was re-embedded with."""
    cells = read_table(cells_path, what="campfire probe cells")
    name = key["method"]
    sets: list[tuple[str, pd.DataFrame, str]] = [(DEFAULT_SET, method_rows(rows_path, name), level)]
    if channel_sets_path:
        cs = read_table(channel_sets_path, what=f"method {name} channel-set embeddings")
        if len(cs):
            cs_level = str(cs["Metadata_Level"].iat[0])
            for s, g in cs.groupby("Metadata_ChannelSet", sort=False):
                sets.append((str(s), g.drop(columns=["Metadata_ChannelSet", "Metadata_Level"]).reset_index(drop=True),
                             cs_level))
    tile = _tile_size(crops_index) if any(lv == "tile" for _, _, lv in sets) else None
    parts = []
    for set_name, rows, lv in sets:
        x, present = cell_vectors(cells, rows, lv, tile_size=tile, source=f"method {name} ({set_name})")
        if not present.all():
            log.warning("method %s (%s): %d of %d probe cells have no %s row (e.g. a crop kind that skips "
                        "cells near the border); they are left out of its probes", name, set_name,
                        int((~present).sum()), len(cells), lv)
        if not present.any():
            raise MorphobenchError(f"method {name} ({set_name}): none of the probe cells has a {lv} row in {rows_path}")
        tab = probe_tasks(x[present], cells[present].reset_index(drop=True), n_subsets=n_subsets, n_folds=n_folds,
                          cfg=cfg, desc=f"probes {name} {set_name}")
        tab.insert(0, "channel_set", set_name)
        parts.append(tab)
    tab = pd.concat(parts, ignore_index=True)
    for i, k in enumerate(("dataset", "method")):
        tab.insert(i, k, key[k])
    tab = tab[["dataset", "method", *PROBE_COLUMNS]]
    write_tsv(tab, out)
    return tab


def summary_stage(table_path: str | os.PathLike, out: str | os.PathLike, config_digest: str | None = None,
                  methods: Mapping | None = None) -> pd.DataFrame:
    from morphobench.io import write_provenance

    tab = summarize(read_table(table_path, what="campfire probes table"))
    write_tsv(tab, out)
    write_provenance(out, config_digest=config_digest, methods=methods)
    return tab


def config_from(d: Mapping) -> ProbeConfig:
    known = set(asdict(ProbeConfig()))
    return ProbeConfig(**{k: v for k, v in d.items() if k in known})
