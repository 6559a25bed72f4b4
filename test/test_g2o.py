"""g2o reading and writing, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from dsg_ros.tools.g2o import G2OError, read_g2o, to_world_model, write_g2o

INFO = "100 0 0 0 0 0 100 0 0 0 0 100 0 0 0 400 0 0 400 0 400"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph.g2o"
    path.write_text(text)
    return path


def test_reads_vertices_edges_and_information(tmp_path):
    path = _write(
        tmp_path,
        "# a comment\n"
        "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\n"
        "VERTEX_SE3:QUAT 5 1 2 3 0 0 0.7071068 0.7071068\n"
        f"EDGE_SE3:QUAT 0 5 1 2 3 0 0 0.7071068 0.7071068 {INFO}\n",
    )
    g = read_g2o(path)
    np.testing.assert_array_equal(g.vertex_ids, [0, 5])
    np.testing.assert_allclose(g.poses[1], [0.7071068, 0, 0, 0.7071068, 1, 2, 3], atol=1e-7)  # wxyz_xyz
    np.testing.assert_allclose(np.diag(g.information[0]), [100, 100, 100, 400, 400, 400])
    wm, var_of = to_world_model(g)
    assert wm.counts() == {"poses": 2, "points": 0, "odom_se3": 1, "prior_se3": 1}
    assert set(var_of) == {0, 5}


@pytest.mark.parametrize(
    "text, message",
    [
        ("VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 0 0\n", r"graph.g2o:2: VERTEX_SE3:QUAT expects 8 fields, got 3"),
        ("VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nEDGE_SE3:QUAT 0 1 0 0 0 0 0 0 1 " + INFO + "\n", r"refers to undefined vertex 1"),
        ("VERTEX_SE3:QUAT 0 0 0 0 0 0 0 0\n", r"graph.g2o:1: zero quaternion"),
        ("VERTEX_SE3:QUAT 0 0 0 x 0 0 0 1\n", r"graph.g2o:1: VERTEX_SE3:QUAT has a non-numeric field"),
        ("VERTEX_SE2 0 0 0 0\n", r"graph.g2o:1: VERTEX_SE2 is a 2D g2o record"),
        ("VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_XYZ 1 0 0 0\n", r"graph.g2o:2: unsupported g2o record 'VERTEX_XYZ'"),
        ("VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\n", r"graph.g2o:2: vertex 0 defined twice \(first on line 1\)"),
        (
            "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 0 0 0 0 0 0 1\nEDGE_SE3:QUAT 0 1 0 0 0 0 0 0 1 "
            + INFO.replace("100", "-100", 1)
            + "\n",
            r"graph.g2o:3: edge 0->1 information matrix is not positive definite",
        ),
        ("", r"no VERTEX_SE3:QUAT records"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, text, message):
    with pytest.raises(G2OError, match=message):
        read_g2o(_write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(G2OError, match="cannot read"):
        read_g2o(tmp_path / "nope.g2o")


def test_write_then_read_round_trips(tmp_path):
    g = read_g2o(DATA / "posegraphs" / "parking-garage.g2o")
    out = tmp_path / "roundtrip.g2o"
    write_g2o(out, g, g.poses)
    back = read_g2o(out)
    np.testing.assert_array_equal(back.edges, g.edges)
    np.testing.assert_allclose(back.poses, g.poses, atol=1e-8)
    np.testing.assert_allclose(back.information, g.information, rtol=1e-8)
