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

from dataclasses import dataclass, replace

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
    # Before ICP, headings within ``heading_search_sigmas`` prior sigmas of the
    # prediction are screened (every ``heading_search_step_rad``) by how close
    # ``heading_search_points`` of the points land to the map; where the best
    # lies farther than ``icp_basin_rad`` from the prediction, ICP also starts
    # there and the better fit is kept. From a heading tens of degrees off
    # (a logging gap in a turn, wheels slipping), ICP alone settles on the
    # wrong walls; the screen costs one nearest-neighbour query of a few
    # thousand points and adds an ICP only where it finds a better heading.
    heading_search_sigmas: float = 2.0
    heading_search_step_rad: float = 0.02
    heading_search_points: int = 100
    icp_basin_rad: float = 0.05
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
        if not (self.heading_search_step_rad > 0.0 and self.heading_search_sigmas >= 0.0 and self.heading_search_points >= 0 and self.icp_basin_rad >= 0.0):
            raise ValueError("registration needs heading_search_step_rad > 0 and heading_search_sigmas, heading_search_points, icp_basin_rad >= 0")


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
    screened:   the alignment started from the heading screen's pick, not
                the prediction, and fit better.
    """

    T_map_base: np.ndarray
    correction: np.ndarray
    matches: int
    rmse_m: float
    iterations: int
    accepted: bool
    cost: float = float("inf")
    screened: bool = False


def map_tree(map_points: np.ndarray) -> cKDTree:
    """The KD-tree ``register`` searches, over map voxels (M, 3). Built by
    sliding midpoints, without shrinking the nodes to their points: half the
    build time of the default (the target is rebuilt after every keyframe)
    for the same search time."""
    return cKDTree(map_points, balanced_tree=False, compact_nodes=False)


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
    frame); otherwise it is the direction of least spread. Both in closed
    form: a batched ``eigh`` of the scatter matrices cost as much as the rest
    of an ICP iteration.
    """
    m = valid.astype(neighbours.dtype)
    mu = np.einsum("nk,nki->ni", m, neighbours) / m.sum(axis=1)[:, None]
    d = (neighbours - mu[:, None, :]) * m[..., None]
    if planar_axis is not None:
        e1, e2 = _plane_basis(planar_axis)
        u, v = d @ e1, d @ e2  # in-plane coordinates (N, k)
        along = 0.5 * np.arctan2(2.0 * np.einsum("nk,nk->n", u, v), np.einsum("nk,nk->n", u, u) - np.einsum("nk,nk->n", v, v))
        return mu, np.outer(-np.sin(along), e1) + np.outer(np.cos(along), e2)
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    sums = [np.einsum("nk,nk->n", a, b) for a, b in ((x, x), (y, y), (z, z), (x, y), (x, z), (y, z))]
    return mu, _least_spread(*sums)


def _least_spread(a00: np.ndarray, a11: np.ndarray, a22: np.ndarray, a01: np.ndarray, a02: np.ndarray, a12: np.ndarray) -> np.ndarray:
    """Unit eigenvectors (N, 3) of the smallest eigenvalues of the symmetric
    3 × 3 matrices with entries ``aij`` (each (N,)).

    The eigenvalue by the trigonometric solution of the characteristic cubic;
    its eigenvector as the longest cross product of two rows of ``A − λ I``
    (orthogonal to all three rows, which span the other eigenvectors).
    """
    mean = (a00 + a11 + a22) / 3.0
    b00, b11, b22 = a00 - mean, a11 - mean, a22 - mean
    p = np.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * (a01 * a01 + a02 * a02 + a12 * a12)) / 6.0)
    det = b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02) + a02 * (a01 * a12 - b11 * a02)
    # Coincident points (p = 0) give a zero ratio, not 0 / 0, and then a zero normal.
    half_det = np.clip(det / (2.0 * np.maximum(p, 1e-30) ** 3), -1.0, 1.0)
    smallest = mean + 2.0 * p * np.cos(np.arccos(half_det) / 3.0 + 2.0 * np.pi / 3.0)
    c00, c11, c22 = a00 - smallest, a11 - smallest, a22 - smallest
    # The rows' three cross products (rows 0 × 1, 0 × 2, 1 × 2), component by component.
    candidates = (
        (a01 * a12 - a02 * c11, a02 * a01 - c00 * a12, c00 * c11 - a01 * a01),
        (a01 * c22 - a02 * a12, a02 * a02 - c00 * c22, c00 * a12 - a01 * a02),
        (c11 * c22 - a12 * a12, a12 * a02 - a01 * c22, a01 * a12 - c11 * a02),
    )
    best, best_sq = candidates[0], sum(c * c for c in candidates[0])
    for other in candidates[1:]:
        other_sq = sum(c * c for c in other)
        longer = other_sq > best_sq
        best = tuple(np.where(longer, o, b) for o, b in zip(other, best))
        best_sq = np.maximum(other_sq, best_sq)
    return np.stack(best, axis=1) / np.sqrt(np.maximum(best_sq, 1e-300))[:, None]


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise a × b of (N, 3) arrays (``np.cross`` costs several times as much at these sizes)."""
    a0, a1, a2 = a[:, 0], a[:, 1], a[:, 2]
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=1)


def _plane_basis(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors (3,) spanning the plane orthogonal to the unit ``axis`` (3,)."""
    e1 = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(axis, e1)


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
    ``tree``: ``map_tree(map_points)`` if already built. ``motion``: the
    odometry distance (m) and rotation (rad) the prediction extrapolated,
    which widens the prior and the heading screen (see
    ``RegistrationConfig.heading_search_sigmas``).
    """
    T_predicted = np.asarray(T_predicted, np.float64)
    if p_base.shape[0] < config.min_matches or min(config.neighbours, map_points.shape[0]) < 3:
        return Registration(T_predicted.copy(), np.zeros(6), 0, float("nan"), 0, False)
    tree = tree if tree is not None else map_tree(map_points)
    sigma_m = config.prior_sigma_m + config.prior_sigma_per_motion * motion[0]
    sigma_rad = config.prior_sigma_rad + config.prior_sigma_per_motion * motion[1]
    axis = None if planar_axis_base is None else np.asarray(planar_axis_base, np.float64) / np.linalg.norm(planar_axis_base)
    up = np.array([0.0, 0.0, 1.0]) if axis is None else axis
    seeds = [T_predicted]
    heading = _screen_headings(p_base, tree, T_predicted, up, config.heading_search_sigmas * sigma_rad, config)
    if abs(heading) > config.icp_basin_rad:
        seeds.append(se3.compose(T_predicted, se3.exp(np.concatenate([np.zeros(3), heading * up]))))
    results = [_align(p_base, map_points, T_predicted, seed, config, axis, tree, (sigma_m, sigma_rad)) for seed in seeds]
    best = min(range(len(results)), key=lambda i: (not results[i].accepted, results[i].cost))
    return replace(results[best], screened=best > 0)


def _screen_headings(p_base: np.ndarray, tree: cKDTree, T_predicted: np.ndarray, up: np.ndarray, half_range: float, config: RegistrationConfig) -> float:
    """The rotation (rad) about ``up`` ((3,), base frame) within ``half_range`` of
    ``T_predicted`` (7,) that brings points ``p_base`` (N, 3) closest to the map:
    a spread subset of them, scored by their mean squared distance to the
    nearest map voxel, capped at ``max_correspondence_m``. 0 when the range
    holds no candidate besides the prediction."""
    steps = int(half_range / config.heading_search_step_rad)
    if steps < 1 or config.heading_search_points < 1:
        return 0.0
    p = p_base[np.linspace(0, len(p_base) - 1, min(len(p_base), config.heading_search_points)).astype(np.int64)]
    angles = config.heading_search_step_rad * np.arange(-steps, steps + 1)
    # Rodrigues' rotation of the subset about ``up`` by each angle (A, n, 3).
    along = np.outer(p @ up, up)
    across = p - along
    turned = np.cross(up, across)
    rotated = along + np.cos(angles)[:, None, None] * across + np.sin(angles)[:, None, None] * turned
    q = rotated.reshape(-1, 3) @ se3.rotation_matrix(T_predicted).T + T_predicted[4:]
    cap = config.max_correspondence_m
    d, _ = tree.query(q, k=1, distance_upper_bound=cap)
    score = np.mean(np.minimum(d, cap).reshape(len(angles), len(p)) ** 2, axis=1)
    return float(angles[int(np.argmin(score))])


def _align(
    p_base: np.ndarray,
    map_points: np.ndarray,
    T_predicted: np.ndarray,
    T_initial: np.ndarray,
    config: RegistrationConfig,
    axis_base: np.ndarray | None,
    tree: cKDTree,
    prior_sigmas: tuple[float, float],
) -> Registration:
    """ICP from ``T_initial`` (7,) with the prior on ``T_predicted`` (7,) of
    ``prior_sigmas`` (m, rad); see ``register``. ``axis_base``: the unit
    normal of a planar scanner's plane."""
    T = np.asarray(T_initial, np.float64).copy()
    reject = Registration(T_predicted.copy(), np.zeros(6), 0, float("nan"), 0, False)
    k = min(config.neighbours, map_points.shape[0])
    if axis_base is not None:
        a = axis_base
        # Basis of the free directions: two translations in the plane and the rotation about its axis.
        basis = np.zeros((6, 3))
        (basis[:3, 0], basis[:3, 1]), basis[3:, 2] = _plane_basis(a), a
    else:
        basis = np.eye(6)
    sigma_m, sigma_rad = prior_sigmas
    prior = np.diag(1.0 / np.array([sigma_m] * 3 + [sigma_rad] * 3) ** 2)
    translations = 2 if axis_base is not None else 3  # the first coordinates of ``basis``
    xi_total = se3.log(se3.between(T_predicted, T))  # correction from the prediction, body frame
    # The pose as a tuple of scalars for ``se3``'s component functions: its
    # array functions cost more on one pose than the rest of an iteration's
    # bookkeeping.
    pose = tuple(T)
    predicted_inverse = se3.inverse_parts(tuple(T_predicted))
    matches, rmse, cost, iteration = 0, float("nan"), float("inf"), 0
    for iteration in range(1, config.max_iterations + 1):
        frac = min(1.0, (iteration - 1) / _SHRINK_ITERATIONS)
        radius = config.max_correspondence_m + frac * (config.min_correspondence_m - config.max_correspondence_m)
        R = np.array(se3.rotation_matrix_parts(pose[:4]))
        q = p_base @ R.T + pose[4:]
        # The nearest voxel must lie within the bound; the local surface
        # through it takes the voxels up to ``surface_radius_m`` further.
        dist, idx = tree.query(q, k=k, distance_upper_bound=radius + config.surface_radius_m)
        dist, idx = dist.reshape(len(q), k), idx.reshape(len(q), k)
        valid = np.isfinite(dist)
        ok = (dist[:, 0] < radius) & (valid.sum(axis=1) >= 3)
        if int(ok.sum()) < config.min_matches:
            break
        neighbours = map_points[np.where(valid[ok], idx[ok], idx[ok, :1])]
        mu, n = _surface_normals(neighbours, valid[ok], None if axis_base is None else R @ a)
        s, qo = p_base[ok], q[ok]
        r = np.einsum("ni,ni->n", n, qo - mu)
        # d r / d ξ for T·Exp(ξ): translation part Rᵀn, rotation part s × (Rᵀn).
        n_body = n @ R
        J = np.concatenate([n_body, _cross(s, n_body)], axis=1) @ basis
        w = 1.0 / (1.0 + (r / config.robust_scale_m) ** 2) / config.point_sigma_m**2
        H_scan = J.T @ (w[:, None] * J)
        H = H_scan + basis.T @ prior @ basis
        g = J.T @ (w * r) + basis.T @ (prior @ xi_total)
        step = np.linalg.solve(H, -g)
        degenerate = _degenerate_translations(H_scan, translations, config.degenerate_ratio)
        step[:translations] -= degenerate @ (degenerate.T @ step[:translations])
        delta = basis @ step
        pose = se3.compose_parts(pose, se3.exp_parts(tuple(delta)))
        xi_total = np.array(se3.log_parts(se3.compose_parts(predicted_inverse, pose)))
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
    return Registration(np.array(pose), xi_total, matches, rmse, iteration, True, cost)

