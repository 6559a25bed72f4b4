"""Generated calibration files (property-based, ``hypothesis``): random bytes,
truncated files, and YAML documents with odd versions, keys and values.

Loading gives a finite theta of the right shapes, or CalibrationFileError
naming the file: never another exception (each of which stopped the node
from starting), never code run from the file. Whatever loads, clipped into
the bounds as the mapper does, stays finite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from hypothesis import example, given, strategies as st

from dsg_ros.learn import calibration as cal

NAMES = sorted(cal.zero_theta())
SHAPES = {k: np.shape(v) for k, v in cal.zero_theta().items()}

scalars = st.one_of(
    st.floats(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**320),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.sampled_from([1e300, -1e300, 710.0, -745.0, 0.0]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=7), max_leaves=20)


@st.composite
def documents(draw) -> str:
    theta = {}
    for name in NAMES:
        if draw(st.integers(0, 9)) == 0:
            continue  # missing
        shape = SHAPES[name]
        if draw(st.booleans()):  # the right shape, values anywhere
            number = st.one_of(st.floats(), st.sampled_from([1e300, -1e300, 0.0]))
            theta[name] = draw(st.lists(number, min_size=shape[0], max_size=shape[0])) if shape else draw(number)
        else:
            theta[name] = draw(values)
    if draw(st.integers(0, 5)) == 0:
        theta[draw(st.one_of(st.text(max_size=8), st.integers(), st.none()))] = draw(values)
    version = draw(st.sampled_from([1, 1, 1, 2, 0, True, "1", None, 1.0]))
    document = {"dsg_ros_calibration": version, "theta": draw(st.sampled_from([theta, theta, theta, [], None, "x"]))}
    text = yaml.safe_dump(document)
    if draw(st.integers(0, 3)) == 0:  # cut short, as a writer that died (not through cal.save) leaves it
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _check(path: Path) -> None:
    try:
        theta = cal.load(path)
    except cal.CalibrationFileError as exc:
        assert str(path) in str(exc)
        return
    assert sorted(theta) == NAMES
    for name, value in theta.items():
        assert np.shape(value) == SHAPES[name] and np.isfinite(np.asarray(value)).all()
    clipped, _ = cal.CalibrationBounds().clip(theta)
    assert all(np.isfinite(v).all() for v in clipped.values())


@given(st.one_of(documents().map(str.encode), st.binary(max_size=200)))
@example(b"dsg_ros_calibration: 1\ntheta: !!python/object/apply:os.system ['touch pwned']\n")
@example(b"\xff\xfe")
@example(b"[" * 1000)
@example(b"dsg_ros_calibration: 1\ntheta: {odom_bias: " + str(10**310).encode() + b"}\n")
@example(b"dsg_ros_calibration: 1\ntheta: {[1, 2]: 0}\n")
def test_a_calibration_file_loads_finite_or_is_refused_naming_it(tmp_path_factory, data: bytes):
    path = tmp_path_factory.getbasetemp() / "fuzzed_calibration.yaml"
    path.write_bytes(data)
    _check(path)
    assert not (Path.cwd() / "pwned").exists()
