"""Rendering of simulated Cell Painting sites (pixels), one plate at a time.

A site is drawn in three steps, all vectorised with numpy on the whole field or on small per-cell
bounding boxes:

1. **Cells.** Nuclei are placed by a clustered point process (cells grow in islands, so touching
   cells are common) with a minimum distance that keeps nuclei apart. Each cell owns the pixels where
   its normalised, anisotropic, harmonically perturbed radius is smallest (a "power diagram" of
   ellipses), nuclei always win their own pixels. This gives the label masks (truth). The field is a
   crop of a larger monolayer: cells are placed over the field plus a margin of about one cell
   diameter (:func:`field_margin`), so cells are cut by the field border and the cell coverage is
   the same at the border as in the centre (in expectation); ``n_cells`` is the expected number of
   cells with a visible nucleus (:func:`placed_count`). The truth labels the cells with ≥ 1 nucleus
   pixel in the field, with their visible part.
2. **Compartment signals** (unit scale, per cell parameters looked up by label):
   DNA = textured nuclei (chromatin speckles, nucleoli holes); ER = perinuclear reticulum (zero
   crossings of band-passed noise) decaying with the distance from the nucleus, nuclear envelope;
   RNA = bright nucleoli, nucleoplasm, diffuse cytoplasm; AGP = bright membrane/cell edges, actin
   fibres along the cell axis, a Golgi blob; Mito = thresholded fine noise (puncta/short tubules)
   concentrated around the nucleus. Brightfield (optional) = faint phase-like cell outlines.
3. **Microscope.** Gaussian PSF, then ``counts = offset + gain × illumination × (scale × signal +
   background) + noise`` (Poisson-like), rounded to uint16. ``gain`` is batch × plate × well-position.

The morphology axes (:data:`~morphobench.simulate.design.AXES`) act on the per-cell parameters in
:func:`cell_parameters`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from morphobench.simulate.design import AXIS_INDEX

#: Counts per unit signal, per channel (16-bit images, JUMP-like dynamic range).
CHANNEL_SCALE = {"DNA": 3200.0, "ER": 1500.0, "RNA": 1400.0, "AGP": 1500.0, "Mito": 1900.0,
                 "Brightfield": 2500.0}
#: Camera conversion for the Poisson-like noise (variance = GAIN × signal counts + READ²).
NOISE_GAIN = 0.6
READ_NOISE = 6.0
PSF_SIGMA = 0.9
#: Baseline geometry (pixels).
NUC_RADIUS = 9.5
CELL_RADIUS = 22.0
MITOTIC_FRACTION = 0.03


def _ax(A: np.ndarray, name: str) -> np.ndarray:
    return A[:, AXIS_INDEX[name]]


def cell_parameters(rng: np.random.Generator, axes: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per-cell parameters for ``n`` cells of a well whose applied morphology vector is ``axes``."""
    A = np.broadcast_to(axes, (n, len(axes)))
    e = rng.standard_normal((n, 12))
    mitotic = rng.random(n) < MITOTIC_FRACTION
    rn = NUC_RADIUS * np.exp(0.13 * _ax(A, "nucleus_size") + 0.09 * e[:, 0]) * np.where(mitotic, 0.72, 1.0)
    rc = CELL_RADIUS * np.exp(0.12 * _ax(A, "cell_size") + 0.12 * e[:, 1] + 0.05 * e[:, 0])
    rc = np.where(mitotic, 1.45 * rn, np.maximum(rc, 1.7 * rn))
    p = {
        "rn": rn, "rc": rc, "mitotic": mitotic,
        "en": np.clip(0.12 + 0.07 * _ax(A, "nucleus_elongation") + 0.05 * e[:, 2], 0.0, 0.7) * ~mitotic,
        "ec": np.clip(0.45 + 0.15 * _ax(A, "cell_elongation") + 0.15 * e[:, 3], 0.0, 1.2) * ~mitotic,
        "irr": 0.2 * np.exp(0.35 * _ax(A, "cell_irregularity") + 0.2 * e[:, 4]) * ~mitotic,
        "theta": rng.uniform(0, np.pi, n),
        "dna_tex": 0.32 * np.exp(0.35 * _ax(A, "DNA_texture") + 0.1 * e[:, 5]) * np.where(mitotic, 0.3, 1.0),
        "er_lambda": 8.0 * np.exp(0.3 * _ax(A, "ER_spread") + 0.1 * e[:, 6]),
        "nucleoli_r": 1.5 * np.exp(0.22 * _ax(A, "nucleoli_size") + 0.08 * e[:, 7]),
        "agp_edge": 1.0 * np.exp(0.35 * _ax(A, "AGP_edge") + 0.1 * e[:, 8]),
        "mito_thr": 0.55 - 0.22 * _ax(A, "Mito_puncta") + 0.08 * e[:, 9],
        "mito_lambda": 7.0 * np.exp(0.3 * _ax(A, "Mito_spread") + 0.1 * e[:, 10]),
    }
    ints = rng.standard_normal((n, 5))
    sds = {"DNA": 0.08, "ER": 0.15, "RNA": 0.15, "AGP": 0.15, "Mito": 0.18}
    for j, ch in enumerate(("DNA", "ER", "RNA", "AGP", "Mito")):
        p[f"I_{ch}"] = np.exp(0.25 * _ax(A, f"{ch}_intensity") + sds[ch] * ints[:, j])
    p["I_DNA"] = p["I_DNA"] * np.where(mitotic, 2.2, 1.0)
    return p


def field_margin() -> int:
    """Width (px) of the band around the field where cells are placed too: about one cell diameter,
    so cells whose nucleus lies outside the field still reach into it (the field is a crop of a larger
    monolayer, and cell coverage is uniform up to the border in expectation)."""
    return int(round(2 * CELL_RADIUS))


def placed_count(n_visible: int, size: int, margin: int, rn: float = NUC_RADIUS) -> int:
    """Number of cells to place over the ``size + 2·margin`` square so that ``n_visible`` of them are
    expected to show ≥ 1 nucleus pixel in the field (the objects of the truth masks).

    A randomly rotated nucleus of radius ``rn`` placed uniformly shows in a ``size``² field when its
    centre is in the field dilated by the nucleus (Steiner: ``size² + 4·size·rn + π·rn²``)."""
    visible = size ** 2 + 4 * size * rn + np.pi * rn ** 2
    return max(1, int(round(n_visible * (size + 2 * margin) ** 2 / visible)))


def place_cells(rng: np.random.Generator, p: dict[str, np.ndarray], size: int,
                margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus centres by a clustered process (70 % of cells near one of ~n/7 cluster centres) with
    hard-core distances that keep nuclei apart and limit how far cell territories overlap.

    Centres lie in the square ``[-margin, size + margin)²`` (field coordinates, y and x), placed
    with periodic boundaries (clusters and distances wrap around the square): the process is then
    stationary, with no pile-up or deficit of cells near the square's border, so with a margin of
    about a cell diameter the cells reaching the field are as dense at its border as in its centre.

    Returns ``(centres, placed)``: n × 2 (y, x) and a boolean mask of the cells that found a place
    within 40 tries (the others are dropped; the truth records the cells actually drawn).
    """
    n = len(p["rn"])
    rmax = p["rn"] * (1 + p["en"]) * 1.08
    n_cl = max(1, int(round(n / 7)))
    L = float(size + 2 * margin)
    clusters = rng.uniform(0, L, (n_cl, 2))
    pos = np.full((n, 2), np.nan)
    placed = np.zeros(n, bool)
    tries = 40
    for i in range(n):
        near = rng.random(tries) < 0.7
        c = clusters[rng.integers(n_cl, size=tries)] + rng.standard_normal((tries, 2)) * 1.3 * p["rc"][i]
        u = rng.uniform(0, L, (tries, 2))
        cand = np.where(near[:, None], c, u) % L
        if placed.any():
            q = pos[placed]
            d = np.abs(cand[:, None, :] - q[None, :, :])
            d = np.sqrt((np.minimum(d, L - d) ** 2).sum(-1))
            need = np.maximum(1.12 * (rmax[i] + rmax[placed]), 0.62 * (p["rc"][i] + p["rc"][placed]))
            ok = (d >= need[None, :]).all(1)
        else:
            ok = np.ones(tries, bool)
        k = np.flatnonzero(ok)
        if k.size:
            pos[i] = cand[k[0]]
            placed[i] = True
    return pos - margin, placed


def _shape_rho(yy, xx, cy, cx, r, ecc, theta, amps, phases):
    """Normalised radius of an ellipse with radial harmonics (k = 2, 3, …) at pixel coordinates.

    ``cos(kφ)``/``sin(kφ)`` come from the Chebyshev recurrence (no arctan2/cos per pixel)."""
    dy, dx = yy - np.float32(cy), xx - np.float32(cx)
    ct, st = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u = dx * ct + dy * st
    v = dy * ct - dx * st
    q = np.float32(np.sqrt(1 + ecc))
    rho = np.sqrt((u * (q / np.float32(r))) ** 2 + (v / (np.float32(r) * q)) ** 2)
    if len(amps):
        rad = np.sqrt(u * u + v * v) + np.float32(1e-6)
        c1, s1 = u / rad, v / rad
        ck, sk = c1, s1
        mod = np.ones_like(rho)
        for amp, ph in zip(amps, phases, strict=True):  # k = 2, 3, …
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
            mod += np.float32(amp * np.cos(ph)) * ck - np.float32(amp * np.sin(ph)) * sk
        rho = rho / np.maximum(mod, np.float32(0.3))
    return rho


def _box(cy, cx, ext, size):
    y0, y1 = min(size, max(0, int(cy - ext))), max(0, min(size, int(cy + ext) + 2))
    x0, x1 = min(size, max(0, int(cx - ext))), max(0, min(size, int(cx + ext) + 2))
    y1, x1 = max(y0, y1), max(x0, x1)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def draw_cells(rng: np.random.Generator, p: dict[str, np.ndarray], size: int, margin: int = 0):
    """Label images (cells, nuclei), nucleus radial coordinate, nucleoli and Golgi images on the
    canvas: the field padded by ``margin`` on each side (field pixel ``(y, x)`` is canvas pixel
    ``(y + margin, x + margin)``).

    Cells are placed over the whole canvas (:func:`place_cells`); those whose territory cannot reach
    the field are not drawn (they only shaped the placement). Labels 1..M are the drawn cells that
    own ≥ 1 nucleus pixel on the canvas, in placement order; returns ``(lab, nuc, nucd, nucleoli,
    golgi, order, centres)`` with ``order`` the parameter row and ``centres`` the nucleus centre
    (field coordinates, possibly outside the field) of each label.
    """
    pos, placed = place_cells(rng, p, size, margin)
    C = size + 2 * margin
    best = np.full((C, C), np.inf, np.float32)
    lab = np.zeros((C, C), np.int32)
    nucleoli = np.zeros((C, C), np.float32)
    golgi = np.zeros((C, C), np.float32)
    n = len(p["rn"])
    namps = rng.uniform(0, 0.05, (n, 3)) / np.arange(2, 5) ** 0.5
    camps = rng.uniform(0.2, 1.0, (n, 5)) * p["irr"][:, None] / np.arange(2, 7) ** 0.7
    nph = rng.uniform(0, 2 * np.pi, (n, 3))
    cph = rng.uniform(0, 2 * np.pi, (n, 5))
    off_ang = rng.uniform(0, 2 * np.pi, n)
    off_len = rng.uniform(0.0, 0.3, n) * p["rc"] * ~p["mitotic"]
    n_nucleoli = rng.integers(1, 5, n)
    golgi_ang = off_ang + np.pi + rng.normal(0, 0.5, n)  # Golgi on the side away from the cell centre
    ext_all = p["rc"] * np.sqrt(1 + p["ec"]) * (1 + camps.sum(1)) + 2
    cyx = pos + off_len[:, None] * np.stack([np.sin(off_ang), np.cos(off_ang)], 1)  # cell centres
    reach = placed & (np.abs(cyx - (size - 1) / 2) <= (size - 1) / 2 + ext_all[:, None]).all(1)
    idx = np.flatnonzero(reach)
    for new, i in enumerate(idx, start=1):
        ny, nx = pos[i] + margin  # canvas coordinates
        cy, cx = cyx[i] + margin
        ext = ext_all[i]
        box, yy, xx = _box(cy, cx, ext, C)
        claim = _shape_rho(yy, xx, cy, cx, p["rc"][i], p["ec"][i], p["theta"][i], camps[i], cph[i])
        claim[claim >= 1] = np.inf
        # the nucleus (its own, smaller box) always claims its pixels: value rho_n - 3 < 0
        next_ = p["rn"][i] * np.sqrt(1 + p["en"][i]) * 1.1 + 2
        nbox, nyy, nxx = _box(ny, nx, next_, C)
        rhon = _shape_rho(nyy, nxx, ny, nx, p["rn"][i], p["en"][i],
                          p["theta"][i] + 0.3 * np.sin(off_ang[i]), namps[i], nph[i])
        sub_ = claim[nbox[0].start - box[0].start:nbox[0].stop - box[0].start,
                     nbox[1].start - box[1].start:nbox[1].stop - box[1].start]
        inn = rhon < 1
        sub_[inn] = rhon[inn] - 3.0
        sub = best[box]
        win = claim < sub
        sub[win] = claim[win]
        lab[box][win] = new
        # nucleoli: small blobs inside the nucleus
        k = n_nucleoli[i]
        ang = rng.uniform(0, 2 * np.pi, k)
        rad = np.sqrt(rng.uniform(0, 1, k)) * 0.5 * p["rn"][i]
        s2 = 2 * (p["nucleoli_r"][i] * rng.uniform(0.7, 1.3, k)) ** 2
        for a, r_, s in zip(ang, rad, s2, strict=True):
            by, bx = np.float32(ny + r_ * np.sin(a)), np.float32(nx + r_ * np.cos(a))
            nucleoli[nbox] += np.exp(-((nyy - by) ** 2 + (nxx - bx) ** 2) / np.float32(s))
        # Golgi: a blob just outside the nucleus
        gr = p["rn"][i] * 1.25
        gy, gx = ny + gr * np.sin(golgi_ang[i]), nx + gr * np.cos(golgi_ang[i])
        gbox, gyy, gxx = _box(gy, gx, 9, C)
        golgi[gbox] += np.exp(-((gyy - np.float32(gy)) ** 2 + (gxx - np.float32(gx)) ** 2) / np.float32(2 * 2.8 ** 2))
    nuc = np.where(best < -1.0, lab, 0)
    nucd = np.where(best < -1.0, best + 3.0, 1.0).astype(np.float32)
    # keep cells that own ≥ 1 nucleus pixel; relabel 1..M in placement order
    counts = np.bincount(nuc.ravel(), minlength=len(idx) + 1)
    keep = counts[1:] > 0
    lut = np.zeros(len(idx) + 1, np.int32)
    lut[1:][keep] = np.arange(1, keep.sum() + 1)
    lab, nuc = lut[lab], lut[nuc]
    order = idx[keep]  # parameter row of each label 1..M
    return lab, nuc, nucd, nucleoli, golgi, order, pos[order]


class NoiseBank:
    """Fourier-domain filters for the texture fields of one image size (built once per plate)."""

    def __init__(self, size: int):
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.rfftfreq(size)[None, :]
        f2 = fy ** 2 + fx ** 2
        self.size = size

        def g(s):
            return np.exp(-2 * np.pi ** 2 * s ** 2 * f2)

        self.k = {
            "dna": g(0.6) - g(2.2),
            "er": g(1.0) - g(2.6),
            "rna": g(1.0) - g(4.0),
            "mito": g(0.7) - g(1.6),
            "bf": g(1.5) - g(6.0),
        }
        self.fibres = []
        for th in np.arange(4) * np.pi / 4:
            fp = fx * np.cos(th) + fy * np.sin(th)
            fo = -fx * np.sin(th) + fy * np.cos(th)
            # thin (σ 0.8 px) across the fibre direction th, long (σ 8 px) along it
            aniso = np.exp(-2 * np.pi ** 2 * (0.8 ** 2 * fo ** 2 + 8.0 ** 2 * fp ** 2))
            self.fibres.append(aniso)
        for key, val in list(self.k.items()):
            self.k[key] = (val / np.sqrt((val ** 2).sum() * 2 / size ** 2 + 1e-12)).astype(np.complex64)
        self.fibres = [(f / np.sqrt((f ** 2).sum() * 2 / size ** 2)).astype(np.complex64) for f in self.fibres]

    def field(self, rng: np.random.Generator, kernel: np.ndarray) -> np.ndarray:
        s = self.size
        w = rng.standard_normal((s, s // 2 + 1, 2), dtype=np.float32)
        spec = (w[..., 0] + 1j * w[..., 1]).astype(np.complex64) * kernel
        out = np.fft.irfft2(spec, s=(s, s)).astype(np.float32)
        return out / (out.std() + 1e-6)


def render_site(rng: np.random.Generator, axes: np.ndarray, n_cells: int, size: int,
                channels: tuple[str, ...], bank: NoiseBank):
    """Signals (C × H × W float32, unit scale, before PSF/camera), cell and nucleus labels, the
    per-cell parameter rows and nucleus centres of labels 1..N, and the parameters of all cells.

    The field is a crop of a larger monolayer: cells are placed over the field plus a margin of
    :func:`field_margin` px on each side (:func:`placed_count` cells, so that ``n_cells`` show in the
    field in expectation) and drawn on that canvas, where the distances to nuclei and cell edges are
    measured, so cells cut by the field border keep their own geometry. The labels (truth) are the
    cells with ≥ 1 nucleus pixel in the field, with their visible part (nucleus and cell cut by the
    border); a cell whose nucleus lies wholly outside still paints its visible cytoplasm but has no
    label (as nucleus-seeded segmentation would leave it).
    """
    margin = field_margin()
    rn0 = NUC_RADIUS * float(np.exp(0.13 * axes[AXIS_INDEX["nucleus_size"]]))
    p = cell_parameters(rng, axes, placed_count(n_cells, size, margin, rn0))
    lab, nuc, nucd, nucleoli, golgi, order, centres = draw_cells(rng, p, size, margin)
    N = len(order)
    # geometry measured on the canvas, then everything is cropped to the field
    nucm = nuc > 0
    dn = ndi.distance_transform_edt(~nucm).astype(np.float32) if N else np.full(lab.shape, 1e3, np.float32)
    boundary = np.zeros_like(nucm)
    boundary[:-1] |= lab[:-1] != lab[1:]
    boundary[1:] |= lab[:-1] != lab[1:]
    boundary[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    boundary[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    de = ndi.distance_transform_edt(~boundary).astype(np.float32)
    if "Brightfield" in channels:
        blur = ndi.laplace(ndi.gaussian_filter((lab > 0).astype(np.float32) + 0.5 * nucm, 2.0))
    crop = (slice(margin, margin + size), slice(margin, margin + size))
    lab, nuc, nucd, nucleoli, golgi, dn, de = (a[crop] for a in (lab, nuc, nucd, nucleoli, golgi, dn, de))

    def per(name, bg=0.0):
        v = np.empty(N + 1, np.float32)
        v[0] = bg
        v[1:] = p[name][order]
        return v

    nucm = nuc > 0
    cellm = lab > 0
    cyto = cellm & ~nucm
    nucleoli = nucleoli * nucm
    nl = np.clip(nucleoli, 0, 1.2)

    out = {}
    # DNA: domed nucleus, chromatin texture, dim nucleoli
    tex = bank.field(rng, bank.k["dna"])
    dome = 0.78 + 0.22 * np.sqrt(np.clip(1 - nucd ** 2, 0, 1))
    dna = per("I_DNA")[nuc] * dome * np.clip(1 + per("dna_tex")[nuc] * tex, 0.2, None) * (1 - 0.45 * nl)
    out["DNA"] = dna * nucm
    # ER: reticular network decaying from the nucleus + nuclear envelope
    b = bank.field(rng, bank.k["er"])
    net = np.clip(1 - np.abs(b) / 0.7, 0, 1) ** 1.5
    lam = per("er_lambda", 1.0)[lab]
    er = cyto * (np.exp(-dn / lam) * (0.2 + 1.1 * net) + 0.35 * np.exp(-dn / 1.5))
    er += nucm * (0.08 + 0.3 * nucd ** 8)
    out["ER"] = per("I_ER")[lab] * er
    # RNA: nucleoli bright, nucleoplasm, cytoplasm granular and perinuclear
    r = bank.field(rng, bank.k["rna"])
    rna = nucm * (0.35 + 2.2 * nl) + cyto * 0.75 * np.exp(-dn / 9.0) * np.clip(0.75 + 0.3 * r, 0.2, None)
    out["RNA"] = per("I_RNA")[lab] * rna
    # AGP: membrane/edges, actin fibres along the cell axis, Golgi (WGA)
    orient = (np.round(p["theta"][order] / (np.pi / 4)).astype(int) % 4)
    fib = np.zeros_like(de)
    if N:
        ol = np.zeros(N + 1, int)
        ol[1:] = orient
        olab = ol[lab]
        for k in np.unique(orient):
            m = cellm & (olab == k)
            if m.any():
                fib[m] = bank.field(rng, bank.fibres[k])[m]
    agp = cellm * (per("agp_edge")[lab] * np.exp(-de / 1.2) * 1.1 + 0.4 * np.clip(fib - 0.8, 0, None)
                   + 0.12) * np.where(nucm, 0.45, 1.0)
    agp += 0.9 * np.clip(golgi, 0, 1) * cyto
    out["AGP"] = per("I_AGP")[lab] * agp
    # Mito: puncta/tubules concentrated around the nucleus
    m = bank.field(rng, bank.k["mito"])
    puncta = np.clip(m - per("mito_thr")[lab], 0, None)
    mito = cyto * np.exp(-dn / per("mito_lambda", 1.0)[lab]) * (0.12 + 1.6 * puncta)
    out["Mito"] = per("I_Mito")[lab] * mito
    if "Brightfield" in channels:
        bf = bank.field(rng, bank.k["bf"])
        out["Brightfield"] = 1.0 + 0.15 * blur[crop] * 4 + 0.03 * bf * cellm
    sig = np.stack([out[c] for c in channels]).astype(np.float32)
    # truth: the cells with a visible nucleus, relabelled 1..n in placement order
    vis = np.bincount(nuc.ravel(), minlength=N + 1)[1:] > 0
    lut = np.zeros(N + 1, np.int32)
    lut[1:][vis] = np.arange(1, vis.sum() + 1)
    return sig, lut[lab], lut[nuc], order[vis], centres[vis], p


def illumination_fields(rng_batch: np.random.Generator, rng_plate: np.random.Generator, size: int,
                        channels: tuple[str, ...]) -> np.ndarray:
    """Smooth multiplicative fields (C × H × W, max 1) shared in shape by a batch, jittered per plate:
    off-centre vignetting, a linear tilt and a few broad bumps (min ≈ 0.4–0.6)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    y = 2 * y / (size - 1) - 1
    x = 2 * x / (size - 1) - 1
    out = []
    for _ in channels:
        cy, cx = rng_batch.uniform(-0.35, 0.35, 2) + rng_plate.normal(0, 0.08, 2)
        v = rng_batch.uniform(0.15, 0.22) * np.exp(rng_plate.normal(0, 0.1))
        gy, gx = rng_batch.normal(0, 0.06, 2) + rng_plate.normal(0, 0.02, 2)
        f = (1 + v * ((x - cx) ** 2 + (y - cy) ** 2)) ** -2.0 * (1 + gy * y + gx * x)
        for _b in range(3):
            by, bx = rng_plate.uniform(-1, 1, 2)
            f *= 1 + rng_plate.normal(0, 0.05) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * 0.45 ** 2))
        f = np.clip(f / f.max(), 0.25, 1.0)
        out.append(f)
    return np.stack(out).astype(np.float32)


def expose(rng: np.random.Generator, sig: np.ndarray, channels: tuple[str, ...], illum: np.ndarray,
           gain: np.ndarray, offset: np.ndarray, background: np.ndarray, noise: float) -> np.ndarray:
    """PSF blur + camera model → uint16 (C × H × W)."""
    out = np.empty(sig.shape, np.uint16)
    for c, ch in enumerate(channels):
        s = ndi.gaussian_filter(sig[c], PSF_SIGMA, truncate=3.0)
        counts = gain[c] * illum[c] * (CHANNEL_SCALE[ch] * s + CHANNEL_SCALE[ch] * background[c])
        if noise > 0:
            sd = noise * np.sqrt(NOISE_GAIN * counts + READ_NOISE ** 2)
            counts = counts + sd * rng.standard_normal(counts.shape, dtype=np.float32)
        np.clip(np.rint(counts + offset[c]), 0, 65535, out=counts)
        out[c] = counts
    return out
