"""Calibration parameters (theta), how they correct measurements, and their file.

theta is a pytree of arrays shared by every tick:

* ``odom_log_scale`` (3,): odometry reports translation × exp(log_scale) per
  axis; the correction divides it back out.
* ``odom_bias`` (6,): a twist rate (ρ̇, ω̇) added by the odometry; the
  correction subtracts ``bias · dt`` (a yaw-rate bias is ``odom_bias[5]``).
* ``extrinsic`` (6,): a twist correcting the nominal base→sensor transform,
  ``T_base_sensor = T_nominal · Exp(extrinsic)``.
* ``log_sigma_odom`` (), ``log_sigma_obs`` (): log-scales of the noise models
  (the online calibration learns these).
* ``log_sigma_odom_axes`` (6,), ``log_sigma_obs_plane`` (): the constant noise
  model learned from bags (``dsg-ros learn``): a log-scale per odometry axis
  (ρ, ω) on top of ``log_sigma_odom``, and the in-plane observation sigma's
  log-scale on top of ``log_sigma_obs`` (which alone scales the sigma along
  a cell's normal). The mapper applies all of them; ``noise_scales`` says how.
* ``time_offset`` () seconds: the odometry reading that belongs with a cloud
  stamped t is the one at t + time_offset (drivers and sensors stamp
  differently; on the real logs odometry leads the scans by ~0.1 s).

One function, ``remeasure``, builds every calibrated measurement from theta,
in NumPy for the mapper's window and in JAX inside the differentiable outer
loop, so what is learned is exactly what is used.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic

import jax
import jax.numpy as jnp
import jax_dataclasses as jdc
import numpy as np
import yaml

from dsg_ros import se3
from dsg_ros.config import load_versioned_yaml
from dsg_ros.files import atomic_path
from dsg_ros.world.layout import ODOM_SE3, VOXEL_ANCHOR_OBS, VOXEL_POINT_OBS, anchor_measurement

FILE_VERSION = 1
Theta = dict[str, jax.Array]
HostTheta = dict[str, np.ndarray]  # the mapper's copy (``as_host``)
AnyTheta = Mapping[str, np.ndarray | jax.Array]


def zero_theta() -> Theta:
    """No correction: unit scale, zero bias, nominal extrinsic, nominal noise."""
    return {
        "odom_log_scale": jnp.zeros(3),
        "odom_bias": jnp.zeros(6),
        "extrinsic": jnp.zeros(6),
        "log_sigma_odom": jnp.zeros(()),
        "log_sigma_obs": jnp.zeros(()),
        "time_offset": jnp.zeros(()),
        "log_sigma_odom_axes": jnp.zeros(6),
        "log_sigma_obs_plane": jnp.zeros(()),
    }


# Parameters added after version 1 files were first written: a file without
# them loads with their zero (no-correction) value.
_ADDED_LATER = frozenset({"time_offset", "log_sigma_odom_axes", "log_sigma_obs_plane"})


@dataclass(frozen=True)
class CalibrationBounds:
    """The range every learned parameter is kept in (a step is clipped into it).

    Wide enough for any working robot, narrow enough that no calibration can
    become degenerate: a self-supervised loss prefers shorter motion (scans
    agree best when nothing moved), and unbounded it shrank a real robot's
    odometry to 0.06 % of its length.
    """

    odom_scale: tuple[float, float] = (0.8, 1.25)
    odom_linear_bias_m_s: float = 0.2
    odom_angular_bias_deg_s: float = 5.0
    extrinsic_translation_m: float = 0.2
    extrinsic_rotation_deg: float = 10.0
    sigma_scale: tuple[float, float] = (0.1, 10.0)
    time_offset_s: float = 0.25

    def __post_init__(self) -> None:
        for name in ("odom_scale", "sigma_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= 1.0 <= hi:
                raise ValueError(f"calibration bounds {name} must satisfy 0 < low <= 1 <= high, got {(lo, hi)}")
        for name in ("odom_linear_bias_m_s", "odom_angular_bias_deg_s", "extrinsic_translation_m", "extrinsic_rotation_deg", "time_offset_s"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"calibration bounds {name} must be >= 0")

    def limits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(low, high) per theta entry, in theta's own units."""
        bias = np.array([self.odom_linear_bias_m_s] * 3 + [np.radians(self.odom_angular_bias_deg_s)] * 3)
        extrinsic = np.array([self.extrinsic_translation_m] * 3 + [np.radians(self.extrinsic_rotation_deg)] * 3)
        log_scale = np.log(np.asarray(self.odom_scale, np.float64))
        log_sigma = np.log(np.asarray(self.sigma_scale, np.float64))
        return {
            "odom_log_scale": (np.full(3, log_scale[0]), np.full(3, log_scale[1])),
            "odom_bias": (-bias, bias),
            "extrinsic": (-extrinsic, extrinsic),
            "log_sigma_odom": (np.asarray(log_sigma[0]), np.asarray(log_sigma[1])),
            "log_sigma_obs": (np.asarray(log_sigma[0]), np.asarray(log_sigma[1])),
            "time_offset": (np.asarray(-self.time_offset_s), np.asarray(self.time_offset_s)),
            "log_sigma_odom_axes": (np.full(6, log_sigma[0]), np.full(6, log_sigma[1])),
            "log_sigma_obs_plane": (np.asarray(log_sigma[0]), np.asarray(log_sigma[1])),
        }

    def clip(self, theta: AnyTheta) -> tuple[HostTheta, list[str]]:
        """theta clipped into the bounds (host arrays), and the names of the entries that were outside."""
        out: HostTheta = {}
        clipped: list[str] = []
        for name, (lo, hi) in self.limits().items():
            value = np.asarray(theta[name], np.float64)
            out[name] = np.clip(value, lo, hi)
            if not np.array_equal(out[name], value):
                clipped.append(name)
        return out, clipped


def as_host(theta: AnyTheta) -> HostTheta:
    """theta as float64 NumPy arrays (copies)."""
    return {k: np.array(v, np.float64) for k, v in theta.items()}


def noise_scales(theta: Mapping[str, se3.Array]) -> tuple[se3.Array, se3.Array, se3.Array]:
    """The factors applied to the configured sigmas: odometry per axis (6,)
    (ρ then ω), observations along a cell's normal () and in its plane ().
    NumPy or JAX, as ``correct_odometry``."""
    xp = se3.namespace(*theta.values())
    odom = xp.exp(theta["log_sigma_odom"] + theta["log_sigma_odom_axes"])
    return odom, xp.exp(theta["log_sigma_obs"]), xp.exp(theta["log_sigma_obs"] + theta["log_sigma_obs_plane"])


def correct_odometry(theta: Mapping[str, se3.Array], raw: se3.Array, dt: se3.Array, velocity: se3.Array) -> se3.Array:
    """Corrected increments ``wxyz_xyz`` (n, 7) from raw increments (n, 7) over ``dt`` (n,) seconds.

    ``velocity`` (n, 2, 6): the raw odometry's body twist rate (ρ̇, ω̇) at
    each increment's start and end stamp. The time offset δ moves both ends
    along them: the increment between the readings at t_i + δ and t_j + δ is
    ``Exp(−δ v_i) · raw · Exp(δ v_j)`` (exact where the velocity is constant
    over δ), so a changed offset needs no re-interpolation of the odometry.

    NumPy in, NumPy out (the mapper's host path, no dispatch); JAX arrays
    in, differentiable JAX out (the calibration step).
    """
    xp = se3.namespace(raw, velocity, *theta.values())
    offset = theta["time_offset"]
    raw = se3.compose(se3.exp(-offset * velocity[:, 0]), se3.compose(raw, se3.exp(offset * velocity[:, 1])))
    xi = se3.log(raw)
    rho = xi[:, :3] * xp.exp(-theta["odom_log_scale"]) - theta["odom_bias"][:3] * dt[:, None]
    omega = xi[:, 3:] - theta["odom_bias"][3:] * dt[:, None]
    return se3.exp(xp.concatenate([rho, omega], axis=1))


def base_sensor(theta: Mapping[str, se3.Array], T_base_sensor_nominal: se3.Array) -> se3.Array:
    """Calibrated ``T_base_sensor`` (7,) (NumPy or JAX, as ``correct_odometry``)."""
    return se3.compose(T_base_sensor_nominal, se3.exp(theta["extrinsic"]))


def observations_in_base(theta: Mapping[str, se3.Array], T_base_sensor_nominal: se3.Array, p_sensor: se3.Array) -> se3.Array:
    """Sensor-frame centroids (n, 3) → base-frame measurements (n, 3)."""
    return se3.apply(base_sensor(theta, T_base_sensor_nominal), p_sensor)


@jdc.pytree_dataclass
class MeasurementInputs(Generic[se3.Array]):
    """What a window's calibrated measurements are computed from, per slab row.

    odom_raw (W, 7), odom_dt (W,), odom_velocity (W, 2, 6): per odometry
    row, the raw increment from the previous keyframe, its duration (s) and
    the raw odometry's body velocity at both ends. obs_p_sensor (R, 3) and
    anchor_p_sensor (A, 3): per observation and per anchor row, the voxel
    centroid in the sensor frame. Host arrays the window fills in place, or
    JAX arrays inside a calibration step.
    """

    odom_raw: se3.Array
    odom_dt: se3.Array
    odom_velocity: se3.Array
    obs_p_sensor: se3.Array
    anchor_p_sensor: se3.Array

    @staticmethod
    def empty(odometry_rows: int, observation_rows: int, anchor_rows: int) -> MeasurementInputs[np.ndarray]:
        """Host buffers for a window's slab capacities (unused rows: no motion, the sensor origin)."""
        return MeasurementInputs(
            odom_raw=np.tile(se3.IDENTITY, (odometry_rows, 1)),
            odom_dt=np.zeros(odometry_rows),
            odom_velocity=np.zeros((odometry_rows, 2, 6)),
            obs_p_sensor=np.zeros((observation_rows, 3)),
            anchor_p_sensor=np.zeros((anchor_rows, 3)),
        )

    def rows(self, odometry: np.ndarray, observations: np.ndarray, anchors: np.ndarray) -> MeasurementInputs[se3.Array]:
        """The inputs of these rows (index arrays per slab) only."""
        return MeasurementInputs(
            odom_raw=self.odom_raw[odometry],
            odom_dt=self.odom_dt[odometry],
            odom_velocity=self.odom_velocity[odometry],
            obs_p_sensor=self.obs_p_sensor[observations],
            anchor_p_sensor=self.anchor_p_sensor[anchors],
        )


def remeasure(
    theta: Mapping[str, se3.Array],
    T_base_sensor_nominal: se3.Array,
    inputs: MeasurementInputs[se3.Array],
    anchor_voxels: se3.Array,
    *,
    observations: bool = True,
) -> dict[str, se3.Array]:
    """Every measurement theta calibrates, per slab name: odometry (W, 7),
    observations (R, 3) and anchors (A, 6), from ``inputs`` and the anchors'
    frozen voxels ``anchor_voxels`` (A, 3). NumPy or JAX, as ``correct_odometry``.

    ``observations=False``: the odometry only; the observations depend on
    theta through the extrinsic alone, and rebuilding them where it is not
    learned only costs time.
    """
    out = {ODOM_SE3: correct_odometry(theta, inputs.odom_raw, inputs.odom_dt, inputs.odom_velocity)}
    if observations:
        out[VOXEL_POINT_OBS] = observations_in_base(theta, T_base_sensor_nominal, inputs.obs_p_sensor)
        out[VOXEL_ANCHOR_OBS] = anchor_measurement(anchor_voxels, observations_in_base(theta, T_base_sensor_nominal, inputs.anchor_p_sensor))
    return out


@dataclass(frozen=True)
class CalibrationSummary:
    """theta in the units people read: scales, deg/s, metres, degrees."""

    odom_scale: tuple[float, float, float]
    odom_bias_linear_m_s: tuple[float, float, float]
    odom_bias_angular_deg_s: tuple[float, float, float]
    extrinsic_translation_m: tuple[float, float, float]
    extrinsic_rotation_deg: tuple[float, float, float]
    sigma_scale_odom: float
    sigma_scale_obs: float
    time_offset_s: float
    sigma_scale_odom_axes: tuple[float, float, float, float, float, float]
    sigma_scale_obs_plane: float

    @staticmethod
    def of(theta: AnyTheta) -> CalibrationSummary:
        t = as_host(theta)
        return CalibrationSummary(
            odom_scale=tuple(np.exp(t["odom_log_scale"]).tolist()),
            odom_bias_linear_m_s=tuple(t["odom_bias"][:3].tolist()),
            odom_bias_angular_deg_s=tuple(np.degrees(t["odom_bias"][3:]).tolist()),
            extrinsic_translation_m=tuple(t["extrinsic"][:3].tolist()),
            extrinsic_rotation_deg=tuple(np.degrees(t["extrinsic"][3:]).tolist()),
            sigma_scale_odom=float(np.exp(t["log_sigma_odom"])),
            sigma_scale_obs=float(np.exp(t["log_sigma_obs"])),
            time_offset_s=float(t["time_offset"]),
            sigma_scale_odom_axes=tuple(np.exp(t["log_sigma_odom_axes"]).tolist()),
            sigma_scale_obs_plane=float(np.exp(t["log_sigma_obs_plane"])),
        )


def save(path: str | Path, theta: AnyTheta, metadata: dict[str, Any] | None = None) -> Path:
    """Write theta as versioned YAML, atomically (:func:`dsg_ros.files.atomic_path`)."""
    path = Path(path)
    values = {k: v.tolist() for k, v in as_host(theta).items()}
    for k, v in values.items():
        if not np.all(np.isfinite(np.asarray(v))):
            raise ValueError(f"refusing to save a non-finite calibration ({k} = {v})")
    document = {
        "dsg_ros_calibration": FILE_VERSION,
        "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "theta": values,
        "summary": _plain(CalibrationSummary.of(theta).__dict__),
        "metadata": metadata or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w") as handle:
        yaml.safe_dump(document, handle, sort_keys=False)
    return path


class CalibrationFileError(ValueError):
    """A calibration file that cannot be used; the message names the file and the problem."""


def load(path: str | Path) -> Theta:
    """Read a calibration file; any problem raises ``CalibrationFileError`` naming the file."""
    path = Path(path)
    document = load_versioned_yaml(path, "dsg_ros_calibration", FILE_VERSION, "calibration file", CalibrationFileError)
    theta = zero_theta()
    given = document.get("theta")
    if not isinstance(given, dict):
        raise CalibrationFileError(f"{path}: no 'theta' mapping of calibration parameters")
    # Keys of any YAML type (numbers, null) are named by their text, so they sort together.
    keys = {str(k) for k in given}
    unknown, missing = sorted(keys - set(theta)), sorted(set(theta) - keys - _ADDED_LATER)
    if unknown or missing:
        raise CalibrationFileError(f"{path}: calibration parameters {'unknown ' + str(unknown) if unknown else ''}"
                                   f"{' and ' if unknown and missing else ''}{'missing ' + str(missing) if missing else ''}")
    for name, default in theta.items():
        if name not in given:
            continue
        value = _numbers(given[name])
        if value is None or value.shape != default.shape or not np.all(np.isfinite(value)):
            raise CalibrationFileError(f"{path}: {name} must be finite numbers with shape {default.shape}, got {given[name]!r}")
        theta[name] = jnp.asarray(value)
    return theta


def _numbers(value: Any) -> np.ndarray | None:
    """``value`` as float64 if it is a number or nested lists of numbers, else None.

    Booleans are refused (YAML ``false`` is not 0.0), as are integers beyond float64.
    """
    def plain(v: Any) -> bool:
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    try:
        return np.asarray(value, np.float64) if plain(value) else None
    except (OverflowError, ValueError, RecursionError):  # a 310-digit integer, ragged or very deep lists
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return float(value) if isinstance(value, (np.floating, float)) else value
