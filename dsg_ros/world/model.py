"""WorldModel: the host-side, mutable factor graph of poses and voxels.

Variables and factors get stable integer ids; each lives in a slot of a
fixed-capacity slab. ``graph()`` and ``pack_state()`` hand the solver device
arrays of those fixed shapes; ``unpack_state()`` writes a solution back.
Measurements are read from the slabs at every solve, never captured in a
closure, so editing one always changes the next answer without recompiling.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import jax
import jax.numpy as jnp
import jaxlie
import numpy as np
from jax.typing import DTypeLike

from dsg_ros import runtime
from dsg_ros.world.factors import DEFAULT_REGISTRY, VALUE_DIM, FactorRegistry, FactorType
from dsg_ros.world.graph import FactorSlab, Graph, State
from dsg_ros.world.noise import Noise, Robust

_IDENTITY_WXYZ_XYZ = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])


@dataclass(frozen=True)
class Capacity:
    """Slot counts: poses, points, and rows per factor type (missing type = 0)."""

    poses: int
    points: int = 0
    factors: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what, n in [("poses", self.poses), ("points", self.points), *self.factors.items()]:
            if int(n) < 0:
                raise ValueError(f"capacity for {what} must be >= 0, got {n}")


@dataclass(frozen=True)
class SlabRows:
    """Read-only view of a slab's bookkeeping: active (F,), var_ids (F, k),
    factor_ids (F,), and the variables' state rows slots (F, k)."""

    active: np.ndarray
    var_ids: np.ndarray
    factor_ids: np.ndarray
    slots: np.ndarray


def _readonly(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


class _Slots:
    """Slot allocator: lowest free slot first, so layouts are deterministic."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = list(range(capacity))

    def take(self, n: int = 1) -> list[int] | None:
        """``n`` free slots (lowest first), or None without taking any if too few are left."""
        if len(self._free) < n:
            return None
        return [heapq.heappop(self._free) for _ in range(n)]

    def give_back(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    def give_back_many(self, slots: list[int]) -> None:
        self._free.extend(slots)
        heapq.heapify(self._free)

    @property
    def used(self) -> int:
        return self.capacity - len(self._free)


class _HostSlab:
    def __init__(self, ftype: FactorType, capacity: int) -> None:
        k, d = len(ftype.var_kinds), ftype.residual_dim
        self.ftype = ftype
        self.alloc = _Slots(capacity)
        self.slots = np.zeros((capacity, k), np.int32)
        self.measurement = np.broadcast_to(ftype.neutral(), (capacity, *ftype.measurement_shape)).copy()
        self.sqrt_info = np.broadcast_to(np.eye(d), (capacity, d, d)).copy()
        self.robust_code = np.zeros(capacity, np.int32)
        self.robust_scale = np.ones(capacity)
        self.active = np.zeros(capacity, bool)
        self.var_ids = np.full((capacity, k), -1, np.int64)
        self.factor_ids = np.full(capacity, -1, np.int64)


class WorldModel:
    """A factor graph of SE(3) poses and R³ points (voxels) with fixed capacities.

    >>> wm = WorldModel(Capacity(poses=2, factors={"prior_se3": 1, "odom_se3": 1}))
    >>> a = wm.add_pose(jaxlie.SE3.identity()); b = wm.add_pose(jaxlie.SE3.identity())
    >>> _ = wm.add_factor("prior_se3", [a], jaxlie.SE3.identity(), Noise.isotropic(1e-3, 6))
    """

    def __init__(self, capacity: Capacity, registry: FactorRegistry | None = None, dtype: DTypeLike | None = None) -> None:
        self.capacity = capacity
        self.registry = registry or DEFAULT_REGISTRY
        self.dtype = jnp.dtype(dtype) if dtype is not None else runtime.default_dtype()
        self._var_alloc = {"pose": _Slots(capacity.poses), "point": _Slots(capacity.points)}
        self._values = {
            "pose": np.broadcast_to(_IDENTITY_WXYZ_XYZ, (capacity.poses, 7)).copy(),
            "point": np.zeros((capacity.points, 3)),
        }
        self._active = {"pose": np.zeros(capacity.poses, bool), "point": np.zeros(capacity.points, bool)}
        self._slot_owner = {"pose": np.full(capacity.poses, -1, np.int64), "point": np.full(capacity.points, -1, np.int64)}
        self._vars: dict[int, tuple[str, int]] = {}
        self._factors: dict[int, tuple[str, int]] = {}
        # Ids are handed out in increasing order and never reused, so an id
        # below the next one that is not live was removed (no set of removed
        # ids: a long mapping run removes millions of factors).
        self._next_var_id = 0
        self._next_factor_id = 0
        self._slabs: dict[str, _HostSlab] = {}
        # Bumped by every edit of what graph() returns; graph() keeps its last
        # device copy until then (a mapping window re-solved between edits
        # would otherwise upload ~3 MB per LM iteration).
        self._revision = 0
        self._device_graph: tuple[int, Graph] | None = None
        for name, n in sorted(capacity.factors.items()):
            ftype = self.registry.get(name)
            if int(n) > 0:
                self._slabs[name] = _HostSlab(ftype, int(n))

    # ------------------------------------------------------------------ variables

    def add_pose(self, T_world_body: Any) -> int:
        """Add an SE(3) pose (``jaxlie.SE3``, ``wxyz_xyz`` (7,) or a (4, 4) matrix); returns its id."""
        return int(self._add_vars("pose", _as_pose(T_world_body, "pose value")[None])[0])

    def add_point(self, p_world: Any) -> int:
        """Add an R³ point (voxel); returns its id."""
        return int(self.add_points(_as_point(p_world, "point value")[None])[0])

    def add_points(self, p_world: np.ndarray) -> np.ndarray:
        """Add many points (n, 3) at once; returns their ids (n,)."""
        p_world = np.asarray(p_world, np.float64)
        if p_world.ndim != 2 or p_world.shape[1] != 3:
            raise ValueError(f"points must have shape (n, 3), got {p_world.shape}")
        if not np.all(np.isfinite(p_world)):
            raise ValueError("point values must be finite")
        return self._add_vars("point", p_world)

    def _add_vars(self, kind: str, values: np.ndarray) -> np.ndarray:
        slots = self._var_alloc[kind].take(values.shape[0])
        if slots is None:
            raise RuntimeError(
                f"{kind} capacity ({self._var_alloc[kind].capacity}) exhausted; raise Capacity.{kind}s"
            )
        ids = np.arange(self._next_var_id, self._next_var_id + len(slots), dtype=np.int64)
        self._next_var_id += len(slots)
        self._vars.update(zip(ids.tolist(), ((kind, s) for s in slots)))
        self._values[kind][slots] = values
        self._active[kind][slots] = True
        self._revision += 1
        self._slot_owner[kind][slots] = ids
        return ids

    def set_value(self, var_id: int, value: Any) -> None:
        kind, slot = self._var(var_id)
        self._values[kind][slot] = _as_pose(value, "pose value") if kind == "pose" else _as_point(value, "point value")

    def value(self, var_id: int) -> jaxlie.SE3 | np.ndarray:
        """Current value: ``jaxlie.SE3`` for poses, (3,) array for points."""
        kind, slot = self._var(var_id)
        val = self._values[kind][slot].copy()
        return jaxlie.SE3(jnp.asarray(val)) if kind == "pose" else val

    def set_active(self, var_id: int, active: bool) -> None:
        """An inactive variable is a constant: factors still read it, solves never move it."""
        kind, slot = self._var(var_id)
        self._active[kind][slot] = bool(active)
        self._revision += 1

    def is_active(self, var_id: int) -> bool:
        kind, slot = self._var(var_id)
        return bool(self._active[kind][slot])

    def kind(self, var_id: int) -> str:
        return self._var(var_id)[0]

    def slot(self, var_id: int) -> int:
        """The variable's row in ``State.poses`` / ``State.points``."""
        return self._var(var_id)[1]

    def remove_variable(self, var_id: int, cascade: bool = False) -> None:
        """Remove a variable. Factors still using it are an error unless ``cascade``."""
        self.remove_variables([var_id], cascade)

    def remove_variables(self, var_ids: Sequence[int], cascade: bool = False) -> None:
        """Remove variables; factors still using any of them are an error unless ``cascade``.

        One pass over the slabs whatever the count, so freeing thousands of
        voxels at once stays cheap.
        """
        located = [(int(v), *self._var(v)) for v in var_ids]
        users = self._factors_using(np.array([v for v, _, _ in located], np.int64))
        if users and not cascade:
            raise ValueError(
                f"variable(s) {[v for v, _, _ in located][:8]} still used by factor(s) {users[:8]}; "
                "remove them first or pass cascade=True"
            )
        self.remove_factors(users)
        for var_id, kind, slot in located:
            del self._vars[var_id]
            self._active[kind][slot] = False
            self._slot_owner[kind][slot] = -1
            self._values[kind][slot] = _IDENTITY_WXYZ_XYZ if kind == "pose" else 0.0
            self._var_alloc[kind].give_back(slot)
        self._revision += 1

    def active_mask(self, var_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Whether each variable is active (free to move), as a bool array."""
        located = [self._var(v) for v in var_ids]
        return np.array([self._active[k][s] for k, s in located], bool)

    def pose_ids(self) -> list[int]:
        return sorted(v for v, (k, _) in self._vars.items() if k == "pose")

    def point_ids(self) -> list[int]:
        return sorted(v for v, (k, _) in self._vars.items() if k == "point")

    def _var(self, var_id: int) -> tuple[str, int]:
        try:
            return self._vars[int(var_id)]
        except KeyError:
            raise self._unknown(var_id) from None

    def _unknown(self, var_id: int) -> KeyError:
        """The error for an id without a variable: removed, or never added."""
        if 0 <= int(var_id) < self._next_var_id:
            return KeyError(f"variable {var_id} was removed")
        return KeyError(f"no variable with id {var_id}")

    # -------------------------------------------------------------------- factors

    def add_factor(
        self,
        type_name: str,
        var_ids: Sequence[int],
        measurement: Any,
        noise: Noise | None = None,
        robust: Robust | None = None,
    ) -> int:
        """Add a factor of a registered type; returns its id.

        ``noise`` defaults to unit sqrt-information; ``robust`` to none.
        """
        ftype = self.registry.get(type_name)
        var_ids = [int(v) for v in var_ids]
        if len(var_ids) != len(ftype.var_kinds):
            raise ValueError(f"{type_name} connects {len(ftype.var_kinds)} variable(s) {ftype.var_kinds}, got {len(var_ids)}")
        meas = self._measurement(ftype, measurement)
        return int(self.add_factors(type_name, np.array([var_ids]), meas[None], noise, robust)[0])

    def add_factors(
        self,
        type_name: str,
        var_ids: np.ndarray,
        measurements: np.ndarray,
        noise: Noise | np.ndarray | None = None,
        robust: Robust | None = None,
    ) -> np.ndarray:
        """Add ``n`` factors of one type at once: ``var_ids`` (n, k), ``measurements`` (n, *shape).

        ``noise``: one model for all, or a sqrt-information per factor (n, d, d).
        All share ``robust``. Returns the new ids (n,). Nothing is added if any
        input is invalid or capacity is short.
        """
        ftype = self.registry.get(type_name)
        host = self._slabs.get(type_name)
        if host is None:
            raise RuntimeError(f"no capacity for factor type {type_name!r}; set Capacity.factors[{type_name!r}]")
        var_ids = np.asarray(var_ids, np.int64)
        if var_ids.ndim != 2 or var_ids.shape[1] != len(ftype.var_kinds):
            raise ValueError(f"{type_name} var_ids must have shape (n, {len(ftype.var_kinds)}), got {var_ids.shape}")
        n = var_ids.shape[0]
        meas = np.asarray(measurements, np.float64)
        if meas.shape != (n, *ftype.measurement_shape):
            raise ValueError(f"{type_name} measurements must have shape {(n, *ftype.measurement_shape)}, got {meas.shape}")
        if not np.all(np.isfinite(meas)):
            raise ValueError(f"{type_name} measurements have non-finite values")
        if ftype.se3_measurement:
            meas = _as_poses(meas, f"{type_name} measurement")
        slots = np.empty_like(var_ids)
        for pos, want in enumerate(ftype.var_kinds):
            # Plain dict lookups over Python ints: a keyframe adds thousands of factors.
            column = var_ids[:, pos].tolist()
            try:
                found = [self._vars[v] for v in column]
            except KeyError as exc:
                raise self._unknown(exc.args[0]) from None
            for vid, (kind, _) in zip(column, found):
                if kind != want:
                    raise ValueError(f"{type_name}: variable {vid} at position {pos} is a {kind}, expected a {want}")
            slots[:, pos] = [slot for _, slot in found]
        sqrt_info = self._sqrt_info(ftype, noise, n)
        rows = host.alloc.take(n)
        if rows is None:
            raise RuntimeError(
                f"{type_name} capacity ({host.alloc.capacity}) exhausted; raise Capacity.factors[{type_name!r}]"
            )
        ids = np.arange(self._next_factor_id, self._next_factor_id + n, dtype=np.int64)
        self._next_factor_id += n
        self._factors.update(zip(ids.tolist(), ((type_name, r) for r in rows)))
        robust = robust or Robust()
        host.slots[rows] = slots
        host.var_ids[rows] = var_ids
        host.factor_ids[rows] = ids
        host.measurement[rows] = meas
        host.sqrt_info[rows] = sqrt_info
        host.robust_code[rows] = robust.code
        host.robust_scale[rows] = robust.scale
        host.active[rows] = True
        self._revision += 1
        return ids

    def set_measurement(self, factor_id: int, measurement: Any) -> None:
        name, row = self._factor(factor_id)
        host = self._slabs[name]
        host.measurement[row] = self._measurement(host.ftype, measurement)
        self._revision += 1

    def set_measurements(self, type_name: str, rows: np.ndarray, measurements: np.ndarray) -> None:
        """Overwrite measurements of active rows of one slab (n,) with (n, *shape)."""
        host = self._slabs[type_name]
        rows = np.asarray(rows, np.int64)
        meas = np.asarray(measurements, np.float64).reshape(rows.shape[0], *host.ftype.measurement_shape)
        if not np.all(host.active[rows]):
            raise ValueError(f"{type_name}: some rows are not active factors")
        if not np.all(np.isfinite(meas)):
            raise ValueError(f"{type_name} measurements have non-finite values")
        host.measurement[rows] = _as_poses(meas, f"{type_name} measurement") if host.ftype.se3_measurement else meas
        self._revision += 1

    def set_noise(self, factor_id: int, noise: Noise) -> None:
        name, row = self._factor(factor_id)
        host = self._slabs[name]
        host.sqrt_info[row] = self._sqrt_info(host.ftype, noise)
        self._revision += 1

    def remove_factor(self, factor_id: int) -> None:
        self.remove_factors([factor_id])

    def remove_factors(self, factor_ids: Sequence[int] | np.ndarray) -> None:
        """Remove factors (all ids are checked before any is removed)."""
        located = [self._factor(f) for f in factor_ids]
        rows_of: dict[str, list[int]] = {}
        for fid, (name, row) in zip(factor_ids, located):
            del self._factors[int(fid)]
            rows_of.setdefault(name, []).append(row)
        for name, rows in rows_of.items():  # one bulk write per slab: marginalization frees thousands
            host = self._slabs[name]
            host.active[rows] = False
            host.slots[rows] = 0
            host.var_ids[rows] = -1
            host.factor_ids[rows] = -1
            host.measurement[rows] = host.ftype.neutral()
            self._revision += 1
            host.alloc.give_back_many(rows)

    def slab_rows(self, type_name: str) -> SlabRows:
        """Read-only per-row view of one slab: which rows are active, their variable and factor ids."""
        host = self._slabs[type_name]
        return SlabRows(
            active=_readonly(host.active), var_ids=_readonly(host.var_ids), factor_ids=_readonly(host.factor_ids), slots=_readonly(host.slots)
        )

    def measurements(self, type_name: str) -> np.ndarray:
        """Read-only view of one slab's measurements (F, *shape)."""
        return _readonly(self._slabs[type_name].measurement)

    def factor_row(self, factor_id: int) -> tuple[str, int]:
        """(type name, row in that type's slab) of a factor."""
        return self._factor(factor_id)

    def factor_rows(self, type_name: str, factor_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows (n,) of ``factor_ids`` in one type's slab, vectorized (KeyError if one is not there)."""
        host = self._slabs[type_name]
        ids = np.asarray(factor_ids, np.int64)
        live = np.flatnonzero(host.factor_ids >= 0)
        order = np.argsort(host.factor_ids[live])
        sorted_ids = host.factor_ids[live][order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, max(sorted_ids.shape[0] - 1, 0))
        found = sorted_ids.shape[0] > 0 and np.all(sorted_ids[pos] == ids) if ids.size else True
        if not found:
            missing = ids[sorted_ids[pos] != ids] if sorted_ids.size else ids
            self._factor(int(missing[0]))  # raises the precise error
            raise KeyError(f"factor {int(missing[0])} is not a {type_name} factor")
        return live[order][pos]

    def factor_ids(self, type_name: str | None = None) -> list[int]:
        return sorted(f for f, (n, _) in self._factors.items() if type_name is None or n == type_name)

    def factors_of(self, var_id: int) -> list[int]:
        """Ids of the active factors connected to a variable."""
        self._var(var_id)
        return self._factors_using(np.array([int(var_id)]))

    def _factors_using(self, var_ids: np.ndarray) -> list[int]:
        out: list[int] = []
        for host in self._slabs.values():
            rows = np.nonzero(host.active & np.any(np.isin(host.var_ids, var_ids), axis=1))[0]
            out.extend(int(f) for f in host.factor_ids[rows])
        return sorted(out)

    def _factor(self, factor_id: int) -> tuple[str, int]:
        try:
            return self._factors[int(factor_id)]
        except KeyError:
            if 0 <= int(factor_id) < self._next_factor_id:
                raise KeyError(f"factor {factor_id} was removed") from None
            raise KeyError(f"no factor with id {factor_id}") from None

    @staticmethod
    def _measurement(ftype: FactorType, measurement: Any) -> np.ndarray:
        if isinstance(measurement, jaxlie.SE3):
            measurement = measurement.wxyz_xyz
        meas = np.asarray(measurement, dtype=np.float64)
        if ftype.se3_measurement:
            return _as_pose(meas, f"{ftype.name} measurement")
        if meas.shape != ftype.measurement_shape:
            raise ValueError(f"{ftype.name} measurement must have shape {ftype.measurement_shape}, got {meas.shape}")
        if not np.all(np.isfinite(meas)):
            raise ValueError(f"{ftype.name} measurement has non-finite values: {meas.tolist()}")
        return meas

    @staticmethod
    def _sqrt_info(ftype: FactorType, noise: Noise | np.ndarray | None, n: int | None = None) -> np.ndarray:
        """(d, d) from a noise model; with ``n`` factors, a per-factor array (n, d, d) is accepted too."""
        d = ftype.residual_dim
        if noise is None:
            return np.eye(d)
        if isinstance(noise, np.ndarray):  # per factor: only with ``n``
            if noise.shape != (n, d, d):
                raise ValueError(f"{ftype.name} per-factor sqrt-information must have shape {(n, d, d)}, got {noise.shape}")
            if not np.all(np.isfinite(noise)):
                raise ValueError(f"{ftype.name} sqrt-information has non-finite values")
            return noise
        if noise.dim != d:
            raise ValueError(f"{ftype.name} residuals are {d}-dimensional; noise model is {noise.dim}-dimensional")
        return noise.sqrt_info

    # ------------------------------------------------------------ device views

    def pack_state(self, on_device: bool = True) -> State:
        """Every slot's value as device arrays (numpy ones if not ``on_device``):
        poses (P, 7), points (V, 3).

        Always copies first: on CPU the transfer may alias the host buffers
        that later edits write into.
        """
        # Host arrays in the device pytree until ``device_put``: JAX takes them wherever it takes its own.
        state = State(
            poses=cast(jax.Array, np.array(self._values["pose"], self.dtype)),
            points=cast(jax.Array, np.array(self._values["point"], self.dtype)),
        )
        return jax.device_put(state) if on_device else state

    def unpack_state(self, state: State) -> dict[int, jaxlie.SE3 | np.ndarray]:
        """Write a solved state back into the active variables; returns id → value."""
        poses = np.asarray(state.poses, np.float64)
        points = np.asarray(state.points, np.float64)
        if poses.shape != self._values["pose"].shape or points.shape != self._values["point"].shape:
            raise ValueError(
                f"state shapes {poses.shape}/{points.shape} do not match capacities "
                f"{self._values['pose'].shape}/{self._values['point'].shape}"
            )
        out: dict[int, jaxlie.SE3 | np.ndarray] = {}
        for vid, (kind, slot) in self._vars.items():
            if kind == "pose":
                q = poses[slot]
                q = np.concatenate([q[:4] / np.linalg.norm(q[:4]), q[4:]])
                self._values["pose"][slot] = q
                out[vid] = jaxlie.SE3(jnp.asarray(q))
            else:
                self._values["point"][slot] = points[slot]
                out[vid] = points[slot].copy()
        return out

    def set_state(self, state: State) -> None:
        """Write a solved state back into every active slot (vectorized ``unpack_state``)."""
        poses = np.asarray(state.poses, np.float64)
        points = np.asarray(state.points, np.float64)
        active_p, active_v = self._active["pose"], self._active["point"]
        q = poses[active_p, :4]
        self._values["pose"][active_p] = np.concatenate([q / np.linalg.norm(q, axis=1, keepdims=True), poses[active_p, 4:]], axis=1)
        self._values["point"][active_v] = points[active_v]

    def values(self, kind: str) -> np.ndarray:
        """Read-only view of every slot's value: poses (P, 7) or points (V, 3)."""
        return _readonly(self._values[kind])

    def graph(self, on_device: bool = True) -> Graph:
        """The factor graph as fixed-shape device arrays (a jit-able pytree);
        numpy copies if not ``on_device`` (to batch on the host before one transfer).

        The device copy is reused until the graph is edited."""
        if on_device and self._device_graph is not None and self._device_graph[0] == self._revision:
            return self._device_graph[1]
        # Host arrays in the device pytree, as in ``pack_state``.
        slabs = tuple(
            FactorSlab(
                ftype=h.ftype,
                slots=h.slots.copy(),
                measurement=cast(jax.Array, np.array(h.measurement, self.dtype)),
                sqrt_info=cast(jax.Array, np.array(h.sqrt_info, self.dtype)),
                robust_code=h.robust_code.copy(),
                robust_scale=cast(jax.Array, np.array(h.robust_scale, self.dtype)),
                active=h.active.copy(),
            )
            for _, h in sorted(self._slabs.items())
        )
        graph = Graph(pose_active=self._active["pose"].copy(), point_active=self._active["point"].copy(), slabs=slabs)
        # Built on the host and sent in one transfer: ~30 separate ``jnp.array``
        # calls cost ~3 ms of dispatch per mapping tick, and dtype conversions
        # on the device compile a kernel per new shape.
        if not on_device:
            return graph
        self._device_graph = (self._revision, jax.device_put(graph))
        return self._device_graph[1]

    def counts(self) -> dict[str, int]:
        """Used slots: poses, points, and each factor type."""
        out = {"poses": self._var_alloc["pose"].used, "points": self._var_alloc["point"].used}
        out.update({name: h.alloc.used for name, h in sorted(self._slabs.items())})
        return out


def _as_pose(value: Any, what: str) -> np.ndarray:
    """A unit-quaternion ``wxyz_xyz`` (7,) from an SE3, a 7-vector or a 4×4 matrix."""
    if isinstance(value, jaxlie.SE3):
        value = value.wxyz_xyz
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape == (4, 4):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what}: matrix has non-finite entries")
        R = arr[:3, :3]
        if not np.allclose(R.T @ R, np.eye(3), atol=1e-6) or np.linalg.det(R) <= 0:
            raise ValueError(f"{what}: the 3×3 block is not a rotation")
        arr = np.asarray(jaxlie.SE3.from_matrix(jnp.asarray(arr)).wxyz_xyz, np.float64)
    if arr.shape != (VALUE_DIM["pose"],):
        raise ValueError(f"{what} must be a jaxlie.SE3, wxyz_xyz (7,) or a (4, 4) matrix; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} has non-finite values: {arr.tolist()}")
    norm = np.linalg.norm(arr[:4])
    if abs(norm - 1.0) > 1e-3:
        raise ValueError(f"{what} quaternion {arr[:4].tolist()} has norm {norm:.6g}; expected a unit quaternion")
    return np.concatenate([arr[:4] / norm, arr[4:]])


def _as_poses(values: np.ndarray, what: str) -> np.ndarray:
    """Vectorized ``_as_pose`` for (n, 7) arrays."""
    norms = np.linalg.norm(values[:, :4], axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
    if bad.size:
        raise ValueError(f"{what} quaternion {values[bad[0], :4].tolist()} has norm {norms[bad[0]]:.6g}; expected a unit quaternion")
    return np.concatenate([values[:, :4] / norms[:, None], values[:, 4:]], axis=1)


def _as_point(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (3,):
        raise ValueError(f"{what} must have shape (3,), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} has non-finite values: {arr.tolist()}")
    return arr.copy()

