"""A seeded indoor world made of axis-aligned boxes, and ray casting into it.

Rooms sit on a ``rows × cols`` grid with a door in every wall between
neighbours. The robot's *route* is a closed polyline through the rooms and
doors; pillars and boxes are placed away from it, so a path that follows it
stays clear. Everything solid (floor, ceiling, walls, pillars, boxes) is an
axis-aligned box, which makes ray casting a vectorized slab test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SLAB = 0.1  # floor / ceiling thickness (m)
_WALL_GAP = 0.3  # obstacles keep at least this far from walls and each other (m)
_RAY_CHUNK = 1 << 13  # boxes × rays per chunk in ray casting: small enough to stay in cache


@dataclass(frozen=True)
class WorldConfig:
    """Layout of the generated world; sizes in metres."""

    rooms: tuple[int, int] = (2, 2)  # grid rows × cols; rows*cols >= 2
    room_size_m: tuple[float, float] = (8.0, 14.0)  # each row height / column width drawn from this
    wall_height_m: float = 2.8
    wall_thickness_m: float = 0.2
    door_width_m: float = 2.0
    door_approach_m: float = 2.0  # the route crosses doors straight over this length each side
    ceiling: bool = True
    pillars_per_room: int = 2
    pillar_side_m: tuple[float, float] = (0.3, 0.6)
    boxes_per_room: int = 4
    box_side_m: tuple[float, float] = (0.4, 1.5)
    box_height_m: tuple[float, float] = (0.3, 1.5)
    route_clearance_m: float = 1.5  # obstacle footprints keep this far from the route

    def __post_init__(self) -> None:
        rows, cols = self.rooms
        if rows < 1 or cols < 1 or rows * cols < 2:
            raise ValueError(f"rooms must be a grid of at least 2 rooms, got {self.rooms}")
        if self.room_size_m[0] <= 2 * _door_margin(self):
            raise ValueError(f"rooms of {self.room_size_m[0]} m are too small for doors and approaches of this size")


@dataclass(frozen=True, eq=False)
class World:
    """Solid boxes plus the route a robot can follow.

    ``box_min``/``box_max`` (M, 3): box corners in the world frame; ``kind``
    (M,): "floor", "ceiling", "wall", "pillar" or "box". ``route`` (W, 2): a
    closed polyline (the last point connects back to the first) at z = 0.
    ``room_centers`` (R, 2), row-major over the grid.
    """

    config: WorldConfig
    box_min: np.ndarray
    box_max: np.ndarray
    kind: np.ndarray
    route: np.ndarray
    room_centers: np.ndarray

    @property
    def obstacles(self) -> np.ndarray:
        """(M,) mask of the boxes a ground robot can collide with (all but floor and ceiling)."""
        return (self.kind != "floor") & (self.kind != "ceiling")

    def raycast(self, origins: np.ndarray, directions: np.ndarray, max_range: float = np.inf) -> np.ndarray:
        """Distance along each ray to the first box, (N,); ``inf`` when nothing is hit within ``max_range``.

        ``origins``, ``directions``: (N, 3) in the world frame, directions of
        unit length. A ray starting inside a box hits it at 0.
        """
        return _raycast(origins, directions, self.box_min, self.box_max, max_range)

    def clearance(self, xy: np.ndarray) -> np.ndarray:
        """Horizontal distance from points (K, 2) to the nearest obstacle footprint, (K,)."""
        keep = self.obstacles
        xy = np.asarray(xy, dtype=float)[:, None]
        return _box_distance(xy, self.box_min[keep, :2], self.box_max[keep, :2]).min(axis=1)

    def surface_distance(self, p_world: np.ndarray) -> np.ndarray:
        """Distance from points (N, 3) to the nearest box surface, (N,), zero on a face.

        For judging returns and maps against the truth: a point inside a box
        measures to that box's nearest face.
        """
        p = np.asarray(p_world, dtype=float)[:, None, :]
        outside = np.linalg.norm(np.maximum(np.maximum(self.box_min - p, p - self.box_max), 0.0), axis=-1)
        inside = np.minimum(p - self.box_min, self.box_max - p).min(axis=-1)
        return np.where(outside > 0.0, outside, np.maximum(inside, 0.0)).min(axis=1)


def build_world(config: WorldConfig, rng: np.random.Generator) -> World:
    """Draw room sizes, door positions and obstacles from ``rng``; deterministic given its state."""
    rows, cols = config.rooms
    x_edges = np.concatenate([[0.0], np.cumsum(rng.uniform(*config.room_size_m, cols))])
    y_edges = np.concatenate([[0.0], np.cumsum(rng.uniform(*config.room_size_m, rows))])
    h, half_t = config.wall_height_m, 0.5 * config.wall_thickness_m
    lo_xy, hi_xy = np.array([-half_t, -half_t]), np.array([x_edges[-1], y_edges[-1]]) + half_t
    boxes = [(np.r_[lo_xy, -_SLAB], np.r_[hi_xy, 0.0], "floor")]
    if config.ceiling:
        boxes.append((np.r_[lo_xy, h], np.r_[hi_xy, h + _SLAB], "ceiling"))
    for axis, edges, span in [(0, x_edges, y_edges), (1, y_edges, x_edges)]:
        for at in (edges[0], edges[-1]):
            boxes.append(_wall(axis, at, span[0] - half_t, span[-1] + half_t, half_t, h))

    # A door in every wall between neighbouring rooms, its centre drawn away from the corners.
    doors: dict[tuple[int, int], np.ndarray] = {}  # (room a, room b), a < b -> door centre (2,)
    margin = _door_margin(config)
    for r in range(rows):
        for c in range(cols):
            for axis, (r2, c2) in [(0, (r, c + 1)), (1, (r + 1, c))]:  # the wall is perpendicular to ``axis``
                if r2 == rows or c2 == cols:
                    continue
                at, (a, b) = (x_edges[c2], y_edges[r : r + 2]) if axis == 0 else (y_edges[r2], x_edges[c : c + 2])
                d = rng.uniform(a + margin, b - margin)
                boxes.append(_wall(axis, at, a, d - 0.5 * config.door_width_m, half_t, h))
                boxes.append(_wall(axis, at, d + 0.5 * config.door_width_m, b, half_t, h))
                doors[(r * cols + c, r2 * cols + c2)] = np.array([at, d] if axis == 0 else [d, at])

    centers = np.array(
        [[x_edges[c : c + 2].mean(), y_edges[r : r + 2].mean()] for r in range(rows) for c in range(cols)]
    )
    route = _route(config, centers, doors)
    route_samples = _densify(route, step=0.1)
    for r in range(rows):
        for c in range(cols):
            room_lo = np.array([x_edges[c], y_edges[r]]) + half_t + _WALL_GAP
            room_hi = np.array([x_edges[c + 1], y_edges[r + 1]]) - half_t - _WALL_GAP
            for what, n in [("pillar", config.pillars_per_room), ("box", config.boxes_per_room)]:
                for _ in range(n):
                    box = _place(config, what, room_lo, room_hi, route_samples, boxes, rng)
                    if box is not None:
                        boxes.append(box)
    box_min, box_max, kind = (np.array(v) for v in zip(*boxes))
    return World(config, box_min, box_max, kind, route, centers)


def _door_margin(config: WorldConfig) -> float:
    """Least distance from a door's centre to the room corners along its wall."""
    return 0.5 * config.door_width_m + config.door_approach_m + 0.5 * config.wall_thickness_m


def _wall(axis: int, at: float, start: float, stop: float, half_t: float, height: float) -> tuple[np.ndarray, np.ndarray, str]:
    """A wall box centred on the plane ``coord[axis] == at``, running from ``start`` to ``stop`` along the other axis."""
    lo, hi = np.zeros(3), np.array([0.0, 0.0, height])
    lo[axis], hi[axis] = at - half_t, at + half_t
    lo[1 - axis], hi[1 - axis] = start, stop
    return lo, hi, "wall"


def _route(config: WorldConfig, centers: np.ndarray, doors: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """A closed tour: round the ring of perimeter rooms, or out and back along a single row or column.

    Each door is crossed straight, between approach points ``door_approach_m``
    either side. An out-and-back tour turns round by a square lap about the
    end rooms' centres.
    """
    rows, cols = config.rooms
    if rows >= 2 and cols >= 2:
        ring = [(0, c) for c in range(cols)] + [(r, cols - 1) for r in range(1, rows)]
        ring += [(rows - 1, c) for c in range(cols - 2, -1, -1)] + [(r, 0) for r in range(rows - 2, 0, -1)]
        tour, laps = [r * cols + c for r, c in ring], set()
    else:
        line = list(range(rows * cols))
        tour, laps = line + line[-2:0:-1], {line[0], line[-1]}
    half_lap = 0.25 * config.room_size_m[0]
    points: list[np.ndarray] = []
    for i, room in enumerate(tour):
        nxt = tour[(i + 1) % len(tour)]
        door = doors[(min(room, nxt), max(room, nxt))]
        if room in laps:  # the lap starts at the corner nearest the door it came through
            away = np.sign(centers[room] - door)
            points += [centers[room] + half_lap * away * k for k in ([-1, -1], [1, -1], [1, 1], [-1, 1])]
        else:
            points.append(centers[room])
        normal = np.sign(centers[nxt] - centers[room])  # neighbours share one centre coordinate exactly
        points += [door - config.door_approach_m * normal, door + config.door_approach_m * normal]
    return np.array(points)


def _densify(polyline: np.ndarray, step: float) -> np.ndarray:
    """Points (P, 2) at most ``step`` apart along a closed polyline (W, 2)."""
    closed = np.vstack([polyline, polyline[:1]])
    out = []
    for a, b in zip(closed[:-1], closed[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        out.append(a + np.linspace(0.0, 1.0, n, endpoint=False)[:, None] * (b - a))
    return np.vstack(out)


def _place(
    config: WorldConfig,
    what: str,
    room_lo: np.ndarray,
    room_hi: np.ndarray,
    route_samples: np.ndarray,
    boxes: list[tuple[np.ndarray, np.ndarray, str]],
    rng: np.random.Generator,
    tries: int = 100,
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """A pillar or box somewhere free in the room (route and other obstacles kept clear), or None."""
    solid = [(lo[:2], hi[:2]) for lo, hi, kind in boxes if kind not in ("floor", "ceiling")]
    solid_lo, solid_hi = np.array([b[0] for b in solid]), np.array([b[1] for b in solid])
    for _ in range(tries):
        if what == "pillar":
            half, height = np.full(2, 0.5 * rng.uniform(*config.pillar_side_m)), config.wall_height_m
        else:
            half, height = 0.5 * rng.uniform(*config.box_side_m, size=2), rng.uniform(*config.box_height_m)
        centre = rng.uniform(room_lo + half, room_hi - half)
        if _box_distance(route_samples, centre - half, centre + half).min() < config.route_clearance_m:
            continue
        # Overlap test by Minkowski sum: the centre must lie outside every grown footprint.
        if _box_distance(centre, solid_lo - half - _WALL_GAP, solid_hi + half + _WALL_GAP).min() <= 0.0:
            continue
        return np.r_[centre - half, 0.0], np.r_[centre + half, height], what
    return None


def _box_distance(xy: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distance from points (..., 2) to filled rectangles [lo, hi] (..., 2), broadcast; zero inside."""
    return np.linalg.norm(np.maximum(np.maximum(lo - xy, xy - hi), 0.0), axis=-1)


def _raycast(
    origins: np.ndarray, directions: np.ndarray, box_min: np.ndarray, box_max: np.ndarray, max_range: float
) -> np.ndarray:
    """Slab test, boxes × rays, in chunks of rays; see ``World.raycast``.

    Arrays are laid out (boxes, rays) and reduced over boxes with elementwise
    ops: numpy reduces a short trailing axis an order of magnitude slower.
    """
    o = np.asarray(origins, dtype=float).T
    d = np.asarray(directions, dtype=float).T
    inv_d = 1.0 / np.where(d == 0.0, 1e-30, d)  # d == 0: slab bounds become ±huge, never NaN
    lo, hi = box_min.T[:, :, None], box_max.T[:, :, None]  # (3, M, 1)
    ranges = np.full(o.shape[1], np.inf)
    chunk = max(1, _RAY_CHUNK // max(1, len(box_min)))
    for s in range(0, o.shape[1], chunk):
        t_near = np.full((len(box_min), min(chunk, o.shape[1] - s)), -np.inf)
        t_far = np.full_like(t_near, np.inf)
        for k in range(3):
            o_k, inv_k = o[k, s : s + chunk], inv_d[k, s : s + chunk]
            t1, t2 = (lo[k] - o_k) * inv_k, (hi[k] - o_k) * inv_k
            np.maximum(t_near, np.minimum(t1, t2), out=t_near)
            np.minimum(t_far, np.maximum(t1, t2), out=t_far)
        hit = (t_near <= t_far) & (t_far >= 0.0)
        t = np.where(hit, np.maximum(t_near, 0.0), np.inf).min(axis=0)
        ranges[s : s + chunk] = np.where(t <= max_range, t, np.inf)
    return ranges
