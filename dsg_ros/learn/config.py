"""Configs of learning from bags: frozen dataclasses, the ``dsg-ros learn``
flags one per field. Plain Python (no JAX) so that ``--help`` stays instant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from dsg_ros.solve.config import SolverConfig

NoiseModel = Literal["constant"]
LossName = Literal["joint_nll", "surrogate"]
InnerMode = Literal["implicit", "unroll", "truncated"]


@dataclass(frozen=True)
class LossConfig:
    """Which loss, and how the surrogate's inner solve runs and is differentiated."""

    loss: LossName = "joint_nll"
    inner: InnerMode = "implicit"
    inner_steps: int = 5  # LM iterations of the inner solve (unroll / truncated: those differentiated through)
    rotation_weight_m: float = 1.0  # metres of error per radian in the surrogate loss

    def __post_init__(self) -> None:
        if self.loss not in ("joint_nll", "surrogate"):
            raise ValueError(f"loss must be joint_nll or surrogate, got {self.loss!r}")
        if self.inner not in ("implicit", "unroll", "truncated"):
            raise ValueError(f"inner must be implicit, unroll or truncated, got {self.inner!r}")
        if self.inner_steps < 1:
            raise ValueError(f"inner steps must be >= 1, got {self.inner_steps}")
        if not self.rotation_weight_m >= 0.0:
            raise ValueError(f"rotation weight must be >= 0, got {self.rotation_weight_m}")

    def solver(self) -> SolverConfig:
        """The inner solve: dense LM, ``inner_steps`` iterations, differentiated by ``inner``."""
        from dsg_ros.solve.config import SolverConfig

        return SolverConfig(
            max_iterations=self.inner_steps,
            linear_solver="dense",
            diff=self.inner,
            unroll_iterations=self.inner_steps,
            truncated_iterations=self.inner_steps,
            # Exact, not Gauss–Newton: theta reaches the noise through the
            # sqrt-information, and the term Gauss–Newton drops (∂J/∂L·e) is
            # then as large as the one it keeps: the noise gradient came out
            # half its size.
            implicit_hessian="exact",
        )


@dataclass(frozen=True)
class LearnConfig:
    """Everything a learning run depends on besides its data and the mapper's settings."""

    noise_model: NoiseModel = "constant"
    loss: LossName = "joint_nll"
    inner: InnerMode = "implicit"
    inner_steps: int = 5
    rotation_weight_m: float = 1.0
    train_sequence_length: int = 20
    batch_size: int = 32
    dataset_fold: int = 0
    num_folds: int = 3
    num_epochs: int = 30
    learning_rate: float = 1e-2
    warmup_steps: int = 10
    max_gradient_norm: float = 10.0
    random_seed: int = 94305
    cells_per_keyframe: int = 128
    # A ground robot moves forward and turns about z: the other odometry
    # axes and most of the extrinsic are unobservable, and Adam, which moves
    # every coordinate at about the learning rate whatever its gradient,
    # let them drift with the noise. Off: odometry forward scale, yaw-rate
    # bias, time offset and the noise model only.
    learn_all_axes: bool = False
    learn_extrinsic: bool = False

    def __post_init__(self) -> None:
        if self.noise_model != "constant":
            raise ValueError(f"noise model must be constant, got {self.noise_model!r}")
        for name in ("batch_size", "num_folds", "cells_per_keyframe"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.train_sequence_length < 2:
            raise ValueError(f"train sequence length must be >= 2 keyframes, got {self.train_sequence_length}")
        if self.num_epochs < 0 or self.warmup_steps < 0:
            raise ValueError("num epochs and warmup steps must be >= 0")
        if not (self.learning_rate > 0 and self.max_gradient_norm > 0):
            raise ValueError("learning rate and max gradient norm must be > 0")
        self.loss_config()  # checks loss, inner, inner steps, rotation weight

    def loss_config(self) -> LossConfig:
        return LossConfig(self.loss, self.inner, self.inner_steps, self.rotation_weight_m)
