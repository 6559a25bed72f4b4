"""The ROS 2 surface files: launch/hybrid.launch.py, config/hybrid.yaml, config/hybrid.rviz.

They must agree with the code: the launch file starts an executable that
setup.py installs, with a parameter file whose every key the node declares
(with the right types), and RViz listens on the topics the node publishes
with compatible QoS. `launch`/`launch_ros` are not in the pip ROS wheels, so
the launch file is checked by parsing it and by running it against stand-in
modules; with launch_ros installed (a ROS distro), for real as well.
Parameter files are loaded by rclpy itself (`--params-file`) into a plain
node named `dsg_mapper` on which `dsg_ros.ros.params.declare` runs: the same
code path as MapperNode without its mapper warm-up (about a minute of JIT).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import random
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "hybrid.launch.py"
PARAMS_FILE = REPO / "config" / "hybrid.yaml"
RVIZ_FILE = REPO / "config" / "hybrid.rviz"
NODE_SOURCE = REPO / "dsg_ros" / "ros" / "node.py"
NODE_NAME = "dsg_mapper"
LAUNCH_ARGUMENTS = {"params_file", "use_sim_time", "rviz", "odom_topic", "points_topic", "scan_topic", "ground_truth_topic"}
SUBSCRIBED = {"odom", "points", "scan", "ground_truth"}


# ----------------------------------------------------------------- helpers


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Calls of a function or method named ``name`` (``Node(...)``, ``x.Node(...)``)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == name) or (isinstance(f, ast.Attribute) and f.attr == name):
                out.append(node)
    return out


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _const(expr: ast.expr | None) -> Any:
    return expr.value if isinstance(expr, ast.Constant) else None


def _launch_tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def _setup_distribution(monkeypatch: pytest.MonkeyPatch):
    """setup.py evaluated by setuptools up to its configuration (nothing built)."""
    setuptools = pytest.importorskip("setuptools")  # noqa: F841 (run_setup needs setuptools' distutils)
    from distutils.core import run_setup

    monkeypatch.chdir(REPO)  # setup.py globs relative paths
    return run_setup(str(REPO / "setup.py"), script_args=[], stop_after="config")


def _yaml_parameters(path: Path) -> dict[str, Any]:
    """Flattened ``/**: ros__parameters`` of a ROS 2 parameter file."""
    from dsg_ros.ros.params import flatten

    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and set(data) == {"/**"}, f"{path}: expected a single '/**' section"
    section = data["/**"]
    assert set(section) == {"ros__parameters"}, f"{path}: expected '/**: ros__parameters'"
    return flatten(section["ros__parameters"])


def _declared_defaults() -> dict[str, Any]:
    """Every parameter the node declares, with its default (needs rclpy: params imports it)."""
    pytest.importorskip("rclpy")
    from dsg_ros.ros.params import NodeSettings, mapper_parameter_defaults

    declared = {f.name: f.default for f in dataclasses.fields(NodeSettings)}
    declared.update(mapper_parameter_defaults())
    declared["use_sim_time"] = False  # declared by rclpy's Node itself
    return declared


def _published_topics() -> dict[str, tuple[str, bool]]:
    """The node's private publishers, read from its source: topic → (message class name, latched)."""
    tree = ast.parse(NODE_SOURCE.read_text())
    topics = {}
    for call in _calls(tree, "create_publisher"):
        msg_type, topic, qos = call.args[:3]
        name = _const(topic)
        if not (isinstance(name, str) and name.startswith("~/")):
            continue
        latched = isinstance(qos, ast.Call) and _const(_kw(qos, "latched")) is True
        assert isinstance(msg_type, ast.Name)
        topics[f"/{NODE_NAME}/{name[2:]}"] = (msg_type.id, latched)
    return topics


@pytest.fixture
def ros_context(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A factory for rclpy contexts initialised with given args on a private,
    localhost-only DDS domain; every context is shut down afterwards."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context

    monkeypatch.setenv("ROS_DOMAIN_ID", str(40 + random.randrange(100)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    contexts = []

    def make(args: list[str]) -> Context:
        ctx = Context()
        rclpy.init(args=args, context=ctx)
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        rclpy.try_shutdown(context=ctx)


def _declare_from(ros_context, params_file: Path):
    """Run ``params.declare`` on a plain ``dsg_mapper`` node fed ``params_file`` by rclpy."""
    from rclpy.node import Node

    from dsg_ros.ros.params import declare

    ctx = ros_context(["--ros-args", "--params-file", str(params_file)])
    node = Node(NODE_NAME, context=ctx)
    try:
        return declare(node)
    finally:
        node.destroy_node()


def _params_yaml(tmp_path: Path, parameters: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": parameters}}))
    return path


# ------------------------------------------------------ (a) the launch file


def test_launch_file_starts_the_installed_node(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = _launch_tree()
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    nodes = {_const(_kw(c, "package")): c for c in _calls(tree, "Node")}
    assert set(nodes) == {"dsg_ros", "rviz2"}
    mapper = nodes["dsg_ros"]
    assert _const(_kw(mapper, "executable")) == "hybrid_node"
    assert _const(_kw(mapper, "name")) == NODE_NAME
    remappings = _kw(mapper, "remappings")
    assert isinstance(remappings, ast.List)
    remapped = set()
    for pair in remappings.elts:
        assert isinstance(pair, ast.Tuple)
        remapped.add(_const(pair.elts[0]))
    assert remapped == SUBSCRIBED
    assert _const(_kw(nodes["rviz2"], "executable")) == "rviz2"
    assert _kw(nodes["rviz2"], "condition") is not None

    declared = {_const(c.args[0]) for c in _calls(tree, "DeclareLaunchArgument")}
    assert declared == LAUNCH_ARGUMENTS

    dist = _setup_distribution(monkeypatch)
    scripts = {
        name.strip(): target.strip()
        for name, target in (line.split("=", 1) for line in dist.entry_points["console_scripts"])
    }
    assert scripts.get("hybrid_node") == "dsg_ros.ros.node:main"
    module, func = scripts["hybrid_node"].split(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in ast.parse(Path(spec.origin).read_text()).body)


def test_setup_installs_launch_and_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    dist = _setup_distribution(monkeypatch)
    installed = {str(Path(dest) / Path(src).name) for dest, sources in dist.data_files for src in sources}
    for path in (LAUNCH_FILE, PARAMS_FILE, RVIZ_FILE):
        relative = path.relative_to(REPO)
        assert f"share/dsg_ros/{relative}" in installed, f"{relative} is not installed"
    # The launch file locates both configs in the installed share folder.
    strings = {_const(n) for n in ast.walk(_launch_tree()) if isinstance(n, ast.Constant)}
    assert {"config", "hybrid.yaml", "hybrid.rviz"} <= strings


def test_launch_file_wiring_with_stand_in_launch_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run generate_launch_description() against recording stand-ins for launch/launch_ros."""

    class Recorder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.args, self.kwargs = args, kwargs

    classes: dict[str, type[Recorder]] = {}

    def module(name: str, *attrs: str) -> None:
        mod = types.ModuleType(name)
        for attr in attrs:
            classes[attr] = type(attr, (Recorder,), {})
            setattr(mod, attr, classes[attr])
        monkeypatch.setitem(sys.modules, name, mod)

    module("launch", "LaunchDescription")
    module("launch.actions", "DeclareLaunchArgument")
    module("launch.conditions", "IfCondition")
    module("launch.substitutions", "LaunchConfiguration", "PathJoinSubstitution")
    module("launch_ros")
    module("launch_ros.actions", "Node")
    module("launch_ros.parameter_descriptions", "ParameterValue")
    ament = types.ModuleType("ament_index_python.packages")
    monkeypatch.setattr(ament, "get_package_share_directory", lambda package: str(REPO) if package == "dsg_ros" else pytest.fail(package), raising=False)
    monkeypatch.setitem(sys.modules, "ament_index_python", types.ModuleType("ament_index_python"))
    monkeypatch.setitem(sys.modules, "ament_index_python.packages", ament)

    spec = importlib.util.spec_from_file_location("hybrid_launch_stand_in", LAUNCH_FILE)
    assert spec is not None and spec.loader is not None
    launch_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_module)
    description = launch_module.generate_launch_description()

    entities = description.args[0]
    arguments = {e.args[0]: e.kwargs.get("default_value") for e in entities if isinstance(e, classes["DeclareLaunchArgument"])}
    assert set(arguments) == LAUNCH_ARGUMENTS
    params_default = arguments["params_file"]
    assert params_default is not None and Path(params_default) == PARAMS_FILE
    assert (arguments["use_sim_time"], arguments["rviz"]) == ("false", "false")
    assert {k: arguments[f"{k}_topic"] for k in SUBSCRIBED} == {k: k for k in SUBSCRIBED}

    def config_name(x: Any) -> str | None:
        return x.args[0] if isinstance(x, classes["LaunchConfiguration"]) else None

    nodes = {e.kwargs["package"]: e.kwargs for e in entities if isinstance(e, classes["Node"])}
    mapper, rviz = nodes["dsg_ros"], nodes["rviz2"]
    assert (mapper["executable"], mapper["name"]) == ("hybrid_node", NODE_NAME)
    params_file, overrides = mapper["parameters"]
    assert config_name(params_file) == "params_file"
    sim_time = overrides["use_sim_time"]
    sim_time = sim_time.args[0] if isinstance(sim_time, classes["ParameterValue"]) else sim_time
    assert config_name(sim_time) == "use_sim_time"
    assert {topic: config_name(value) for topic, value in mapper["remappings"]} == {k: f"{k}_topic" for k in SUBSCRIBED}
    assert rviz["arguments"][0] == "-d" and Path(rviz["arguments"][1]) == RVIZ_FILE
    assert config_name(rviz["condition"].args[0]) == "rviz"


# --------------------------------------------------- (b) the parameter file


def test_params_file_keys_and_types_are_declared_by_the_node() -> None:
    assert PARAMS_FILE.is_file()
    parameters = _yaml_parameters(PARAMS_FILE)
    declared = _declared_defaults()
    unknown = sorted(set(parameters) - set(declared))
    assert not unknown, f"config/hybrid.yaml sets parameters the node does not declare: {unknown}"
    from dsg_ros.ros.params import NodeSettings

    missing = sorted({f.name for f in dataclasses.fields(NodeSettings)} - set(parameters))
    assert not missing, f"config/hybrid.yaml lacks node settings {missing}"
    for required in ("window.keyframes", "window.max_voxels", "window.max_observations_per_keyframe", "keyframes.distance_m",
                     "keyframes.angle_deg", "keyframes.interval_s", "voxel_size", "min_range_m", "max_range_m",
                     "T_base_sensor", "calibration.every_keyframes"):
        assert f"mapper.{required}" in parameters
    # rclpy does not coerce: an int where a double is declared is refused.
    for name, value in parameters.items():
        default = declared[name]
        assert type(value) is type(default), f"{name}: {value!r} is a {type(value).__name__}, declared {type(default).__name__}"
        if isinstance(default, list):
            assert all(type(v) is type(d) for v, d in zip(value, default)), f"{name}: element types differ from {default!r}"


def test_params_file_values() -> None:
    parameters = _yaml_parameters(PARAMS_FILE)
    declared = _declared_defaults()
    expected_changes = {
        "mapper.window.max_voxels": 4096,
        "mapper.window.max_observations_per_keyframe": 1500,
        "calibration_file": "",
        # Offline replay does not refine; a live node spends idle time on it.
        "mapper.refine_iterations": 4,
    }
    for name, value in parameters.items():
        assert value == expected_changes.get(name, declared[name]), f"{name}: {value!r}"


def test_params_file_loads_through_rclpy(ros_context) -> None:
    """The shipped file, read by rclpy and the node's own declare(): no type or range refusals."""
    settings, mapper = _declare_from(ros_context, PARAMS_FILE)
    parameters = _yaml_parameters(PARAMS_FILE)
    assert settings.map_frame == parameters["map_frame"] and settings.rate_hz == parameters["rate_hz"]
    assert mapper.window.max_voxels == 4096
    assert mapper.window.max_observations_per_keyframe == 1500
    assert tuple(mapper.T_base_sensor) == tuple(parameters["mapper.T_base_sensor"])


# -------------------------------------------------------- (c) the RViz file


def test_rviz_config_shows_the_node_topics() -> None:
    config = yaml.safe_load(RVIZ_FILE.read_text())
    assert {"Panels", "Visualization Manager", "Window Geometry"} <= set(config)
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "map"
    assert manager["Views"]["Current"]["Class"] in {"rviz_default_plugins/Orbit", "rviz_default_plugins/TopDownOrtho"}
    displays = manager["Displays"]
    assert any(d["Class"] == "rviz_default_plugins/Grid" for d in displays)

    published = _published_topics()
    assert set(published) == {f"/{NODE_NAME}/{t}" for t in ("poses", "path", "voxels", "graph", "odometry")}
    plugin_of = {"PoseArray": "PoseArray", "PathMsg": "Path", "Path": "Path", "MarkerArray": "MarkerArray", "Odometry": "Odometry"}
    shown = {}
    for d in displays:
        if "Topic" not in d:
            continue
        topic = d["Topic"]
        shown[topic["Value"]] = d["Class"]
        assert topic["Value"] in published, f"RViz display {d['Name']!r} listens on {topic['Value']}, which the node does not publish"
        msg_type, latched = published[topic["Value"]]
        assert d["Class"] == f"rviz_default_plugins/{plugin_of[msg_type]}"
        # A transient-local subscription gets nothing from a volatile publisher.
        assert topic["Durability Policy"] == ("Transient Local" if latched else "Volatile"), topic["Value"]
        assert topic["Reliability Policy"] == "Reliable" and topic["History Policy"] == "Keep Last"
    assert set(shown) == set(published), f"topics without a display: {sorted(set(published) - set(shown))}"


# -------------------------------------------- (d) launch_ros, where installed


def test_launch_description_builds_with_launch_ros(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("launch_ros")
    pytest.importorskip("launch")
    spec = importlib.util.spec_from_file_location("hybrid_launch", LAUNCH_FILE)
    assert spec is not None and spec.loader is not None
    launch_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_module)
    # The package need not be installed in the ament index to build the description.
    monkeypatch.setattr(launch_module, "get_package_share_directory", lambda package: str(REPO))
    description = launch_module.generate_launch_description()
    arguments = {a.name: a for a in description.get_launch_arguments()}
    assert set(arguments) == LAUNCH_ARGUMENTS
    from launch_ros.actions import Node

    assert sum(isinstance(e, Node) for e in description.entities) == 2


# ------------------------------------ (e) parameter values reach the node


def test_parameter_file_values_take_effect(ros_context, tmp_path: Path) -> None:
    path = _params_yaml(tmp_path, {"rate_hz": 7.0, "points_reliability": "reliable", "mapper": {"window": {"keyframes": 6}, "voxel_size": 0.3}})
    settings, mapper = _declare_from(ros_context, path)
    assert settings.rate_hz == 7.0
    assert settings.points_reliability == "reliable"
    assert mapper.window.keyframes == 6
    assert mapper.voxel_size == 0.3
    assert settings.odom_frame == "odom"  # untouched: default


def test_invalid_choice_is_refused_by_declare(ros_context, tmp_path: Path) -> None:
    path = _params_yaml(tmp_path, {"points_reliability": "sometimes"})
    with pytest.raises(ValueError, match="points_reliability"):
        _declare_from(ros_context, path)


def test_invalid_scan_topic_is_refused_by_declare(ros_context, tmp_path: Path) -> None:
    path = _params_yaml(tmp_path, {"scan_topic": "base scan"})
    with pytest.raises(ValueError, match="scan_topic"):
        _declare_from(ros_context, path)


def test_out_of_range_is_refused_by_rclpy(ros_context, tmp_path: Path) -> None:
    from rclpy.exceptions import InvalidParameterValueException

    path = _params_yaml(tmp_path, {"rate_hz": 0.0})
    with pytest.raises(InvalidParameterValueException, match="rate_hz"):
        _declare_from(ros_context, path)


def test_wrong_type_is_refused_by_rclpy(ros_context, tmp_path: Path) -> None:
    from rclpy.exceptions import InvalidParameterTypeException

    path = _params_yaml(tmp_path, {"rate_hz": 7})  # an int for a double
    with pytest.raises(InvalidParameterTypeException, match="rate_hz"):
        _declare_from(ros_context, path)


def test_invalid_mapper_config_is_refused_by_declare(ros_context, tmp_path: Path) -> None:
    path = _params_yaml(tmp_path, {"mapper": {"T_base_sensor": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}})
    with pytest.raises(ValueError, match="T_base_sensor"):
        _declare_from(ros_context, path)
