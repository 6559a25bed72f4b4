"""Scan-to-map registration: align each cloud to the map before it is placed.

Odometry of a real robot is off by centimetres per scan and degrees per turn
(wheels slip, logs stall); cells keyed through such a pose land on the wrong
voxels and the solve then pulls the pose toward them. So every cloud is
first aligned to the voxels already mapped around it, by robust
point-to-plane ICP (point-to-line for planar scanners): each source point is
matched to its nearest map voxel, the local surface through it and its
neighbours gives a normal, and Gauss–Newton minimizes the distances along
the normals.

A prior on the predicted pose keeps directions the scene does not constrain
(a corridor's axis; z, roll and pitch for a planar scanner) where odometry
put them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from dsg_ros import se3
from dsg_ros.mapping.voxels import pack_cells


# Iterations over which the correspondence bound shrinks to its minimum.
_SHRINK_ITERATIONS = 3


@dataclass(frozen=True)
class RegistrationConfig:
    """Scan-to-map ICP settings."""

    enabled: bool = True
    max_iterations: int = 15
    # Correspondences farther than this are ignored; the bound shrinks from
    # ``max_correspondence_m`` toward ``min_correspondence_m`` as the
    # alignment settles, so a first pass reaches across odometry errors and
    # the last ones use only close, reliable matches.
    max_correspondence_m: float = 1.0
    min_correspondence_m: float = 0.3
    neighbours: int = 3  # map voxels defining the local surface of a match (3 at least)
    surface_radius_m: float = 0.3  # how far beyond the nearest voxel they may lie
    # Scale of the Cauchy weight on point-to-surface distances.
    robust_scale_m: float = 0.1
    # Noise of one point-to-surface distance (sensor noise plus surface
    # roughness): it weighs the points against the prior below.
    point_sigma_m: float = 0.05
    # Prior on the predicted pose: a floor plus a fraction of the odometry
    # motion it was predicted over. Against hundreds of points it only
    # decides where the scene does not constrain the pose (a corridor's axis);
    # there the odometry is the better guess. The heading floor allows for
    # wheel slip: FR079's odometry missed 25° in 0.8 s of one turn, and a
    # 3° floor held the scans 15° off.
    prior_sigma_m: float = 0.1
    prior_sigma_rad: float = 0.15
    prior_sigma_per_motion: float = 0.2
    # Where the prior's heading sigma exceeds this (a logging gap or a fast
    # turn between two scans), the alignment also starts from headings ½ and
    # 1 sigma either side of the prediction and keeps the one that fits
    # best: from a heading tens of degrees off, ICP settles on the wrong
    # walls (ACES: a 3 s gap in a 78° turn left an 8° heading error).
    heading_hypotheses_above_rad: float = 0.3
    min_matches: int = 20  # fewer: keep the prediction
    # A translation direction the points pin down less than this fraction as
    # well as the best-pinned one (a corridor's axis) is left where the
    # prediction put it: there a few stray matches (a door frame, clutter)
    # outweigh the prior and slide the pose along, metres over a corridor.
    degenerate_ratio: float = 0.05
    # A cloud is thinned to one point per cell of this size (its own frame)
    # and at most ``max_points`` points before it is aligned: a 3D lidar's
    # tens of thousands of returns say little more about six degrees of
    # freedom than a few hundred spread ones, at a fraction of the cost.
    source_cell_m: float = 0.2
    max_points: int = 400
    # Map voxels farther than this from the predicted sensor position are
    # not considered (they cannot match a point within the sensor's range).
    map_radius_m: float = 40.0
    tolerance: float = 1e-3  # stop when the update is below this (m and rad)

    def __post_init__(self) -> None:
        if not 0.0 < self.min_correspondence_m <= self.max_correspondence_m:
            raise ValueError("registration needs 0 < min_correspondence_m <= max_correspondence_m")
        if self.neighbours < 3 or self.max_iterations < 0 or self.min_matches < 3:
            raise ValueError("registration needs neighbours >= 3, max_iterations >= 0, min_matches >= 3")


@dataclass(frozen=True)
class Registration:
    """The outcome of one alignment.

    T_map_base: (7,) the aligned pose (the prediction when not ``accepted``).
    correction: (6,) twist from the predicted to the aligned pose (body frame).
    matches:    correspondences used in the last iteration.
    rmse_m:     RMS point-to-surface distance of those matches.
    cost:       the robust objective there (unmatched points at the
                correspondence bound, plus the prior): what picks one of
                several starting headings.
    """

    T_map_base: np.ndarray
    correction: np.ndarray
    matches: int
    rmse_m: float
    iterations: int
    accepted: bool
    cost: float = float("inf")


def thin(p: np.ndarray, cell: float, max_points: int) -> np.ndarray:
    """One point (the first) per occupied ``cell`` of ``p`` (N, 3), then at most
    ``max_points`` of those, evenly spread over the cloud's order. A large
    cloud is strided to 8 × ``max_points`` first: hashing every return of a
    3D lidar cost more than aligning the result."""
    if p.shape[0] > 8 * max_points:
        p = p[:: p.shape[0] // (8 * max_points)]
    _, first = np.unique(pack_cells(np.floor(p / cell)), return_index=True)
    keep = np.sort(first)
    if keep.size > max_points:
        keep = keep[np.linspace(0, keep.size - 1, max_points).astype(np.int64)]
    return p[keep]


def _degenerate_translations(H: np.ndarray, n: int, ratio: float) -> np.ndarray:
    """Unit translation directions (n, d) the information ``H`` (its first ``n``
    coordinates translations) pins down less than ``ratio`` × the best one,
    with the rotations free to adjust (the Schur complement onto translation)."""
    H_tt, H_tr, H_rr = H[:n, :n], H[:n, n:], H[n:, n:]
    H_t = H_tt - H_tr @ np.linalg.solve(H_rr + 1e-9 * np.eye(H_rr.shape[0]), H_tr.T)
    lam, V = np.linalg.eigh(0.5 * (H_t + H_t.T))
    return V[:, lam < ratio * max(lam[-1], 1e-12)]


def _surface_normals(neighbours: np.ndarray, valid: np.ndarray, planar_axis: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (N, 3) and unit normals (N, 3) of neighbourhoods (N, k, 3),
    of which only the ``valid`` (N, k) points count.

    A planar scanner sees lines in its plane: the normal is taken within the
    plane orthogonal to ``planar_axis`` (the scan plane's normal in the map
    frame); otherwise it is the direction of least spread.
    """
    m = valid[..., None].astype(neighbours.dtype)
    mu = (neighbours * m).sum(axis=1) / m.sum(axis=1)
    d = (neighbours - mu[:, None, :]) * m
    if planar_axis is not None:
        d = d - (d @ planar_axis)[..., None] * planar_axis
    cov = np.einsum("nki,nkj->nij", d, d)
    w, v = np.linalg.eigh(cov)
    if planar_axis is not None:
        # The axis itself carries no spread (eigenvalue 0): the line normal
        # is the eigenvector of the smaller of the two remaining eigenvalues.
        along_axis = np.abs(np.einsum("nij,i->nj", v, planar_axis))
        order = np.argsort(w + 1e9 * (along_axis > 0.9), axis=1)
        n = np.take_along_axis(v, order[:, None, :1], axis=2)[..., 0]
    else:
        n = v[:, :, 0]
    return mu, n


def register(
    p_base: np.ndarray,
    map_points: np.ndarray,
    T_predicted: np.ndarray,
    config: RegistrationConfig = RegistrationConfig(),
    planar_axis_base: np.ndarray | None = None,
    tree: cKDTree | None = None,
    motion: tuple[float, float] = (0.0, 0.0),
) -> Registration:
    """Align points ``p_base`` (N, 3, base frame) to ``map_points`` (M, 3, map frame).

    ``T_predicted`` (7,) is the odometry prediction of ``T_map_base``.
    ``planar_axis_base`` (3,): the normal of a planar scanner's scan plane in
    the base frame; the pose then moves only within that plane (three
    degrees of freedom), since the scan says nothing about the other three.
    ``tree``: a KD-tree already built over ``map_points``. ``motion``: the
    odometry distance (m) and rotation (rad) the prediction extrapolated,
    which widens the prior (and, when wide, adds starting headings: see
    ``RegistrationConfig.heading_hypotheses_above_rad``).
    """
    T_predicted = np.asarray(T_predicted, np.float64)
    if p_base.shape[0] < config.min_matches or min(config.neighbours, map_points.shape[0]) < 3:
        return Registration(T_predicted.copy(), np.zeros(6), 0, float("nan"), 0, False)
    tree = tree if tree is not None else cKDTree(map_points)
    seeds = [T_predicted]
    sigma_rad = config.prior_sigma_rad + config.prior_sigma_per_motion * motion[1]
    if sigma_rad > config.heading_hypotheses_above_rad:
        up = np.array([0.0, 0.0, 1.0]) if planar_axis_base is None else np.asarray(planar_axis_base, np.float64) / np.linalg.norm(planar_axis_base)
        seeds += [se3.compose(T_predicted, se3.exp(np.concatenate([np.zeros(3), k * sigma_rad * up]))) for k in (-1.0, -0.5, 0.5, 1.0)]
    results = [_align(p_base, map_points, T_predicted, seed, config, planar_axis_base, tree, motion) for seed in seeds]
    return min(results, key=lambda r: (not r.accepted, r.cost))


def _align(
    p_base: np.ndarray,
    map_points: np.ndarray,
    T_predicted: np.ndarray,
    T_initial: np.ndarray,
    config: RegistrationConfig,
    planar_axis_base: np.ndarray | None,
    tree: cKDTree,
    motion: tuple[float, float],
) -> Registration:
    """ICP from ``T_initial`` (7,) with the prior on ``T_predicted`` (7,); see ``register``."""
    T = np.asarray(T_initial, np.float64).copy()
    reject = Registration(T_predicted.copy(), np.zeros(6), 0, float("nan"), 0, False)
    k = min(config.neighbours, map_points.shape[0])
    if planar_axis_base is not None:
        a = np.asarray(planar_axis_base, np.float64) / np.linalg.norm(planar_axis_base)
        # Basis of the free directions: two translations in the plane and the rotation about its axis.
        e1 = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(a, e1)
        basis = np.zeros((6, 3))
        basis[:3, 0], basis[:3, 1], basis[3:, 2] = e1, e2, a
    else:
        basis = np.eye(6)
    sigma_m = config.prior_sigma_m + config.prior_sigma_per_motion * motion[0]
    sigma_rad = config.prior_sigma_rad + config.prior_sigma_per_motion * motion[1]
    prior = np.diag(1.0 / np.array([sigma_m] * 3 + [sigma_rad] * 3) ** 2)
    translations = 2 if planar_axis_base is not None else 3  # the first coordinates of ``basis``
    xi_total = se3.log(se3.between(T_predicted, T))  # correction from the prediction, body frame
    matches, rmse, cost, iteration = 0, float("nan"), float("inf"), 0
    for iteration in range(1, config.max_iterations + 1):
        frac = min(1.0, (iteration - 1) / _SHRINK_ITERATIONS)
        radius = config.max_correspondence_m + frac * (config.min_correspondence_m - config.max_correspondence_m)
        R = se3.rotation_matrix(T)
        q = p_base @ R.T + T[4:]
        # The nearest voxel must lie within the bound; the local surface
        # through it takes the voxels up to ``surface_radius_m`` further.
        dist, idx = tree.query(q, k=k, distance_upper_bound=radius + config.surface_radius_m)
        dist, idx = dist.reshape(len(q), k), idx.reshape(len(q), k)
        valid = np.isfinite(dist)
        ok = (dist[:, 0] < radius) & (valid.sum(axis=1) >= 3)
        if int(ok.sum()) < config.min_matches:
            break
        neighbours = map_points[np.where(valid[ok], idx[ok], idx[ok, :1])]
        mu, n = _surface_normals(neighbours, valid[ok], None if planar_axis_base is None else R @ a)
        s, qo = p_base[ok], q[ok]
        r = np.einsum("ni,ni->n", n, qo - mu)
        # d r / d ξ for T·Exp(ξ): translation part Rᵀn, rotation part s × (Rᵀn).
        n_body = n @ R
        J = np.concatenate([n_body, np.cross(s, n_body)], axis=1) @ basis
        w = 1.0 / (1.0 + (r / config.robust_scale_m) ** 2) / config.point_sigma_m**2
        H_scan = J.T @ (w[:, None] * J)
        H = H_scan + basis.T @ prior @ basis
        g = J.T @ (w * r) + basis.T @ (prior @ xi_total)
        step = np.linalg.solve(H, -g)
        degenerate = _degenerate_translations(H_scan, translations, config.degenerate_ratio)
        step[:translations] -= degenerate @ (degenerate.T @ step[:translations])
        delta = basis @ step
        T = se3.compose(T, se3.exp(delta))
        xi_total = se3.log(se3.between(T_predicted, T))
        matches, rmse = int(ok.sum()), float(np.sqrt(np.mean(r**2)))
        # The Cauchy loss whose weights ``w`` are, with every point not
        # matched counted at the bound: comparable between starting headings.
        s2 = config.robust_scale_m**2 / config.point_sigma_m**2
        unmatched = (len(q) - matches) * np.log1p((radius / config.robust_scale_m) ** 2)
        cost = 0.5 * s2 * (float(np.sum(np.log1p((r / config.robust_scale_m) ** 2))) + unmatched) + 0.5 * float(xi_total @ prior @ xi_total)
        if np.linalg.norm(delta[:3]) < config.tolerance and np.linalg.norm(delta[3:]) < config.tolerance and frac >= 1.0:
            break
    if matches < config.min_matches:
        return Registration(reject.T_map_base, reject.correction, matches, rmse, iteration, False)
    return Registration(T, xi_total, matches, rmse, iteration, True, cost)

