"""Write docs/parameters.md: every node parameter, generated from the config dataclasses.

    python docs/parameters.py            # rewrite docs/parameters.md
    python docs/parameters.py --check    # exit 1 if it is out of date

Names and defaults come from ``NodeSettings`` and ``MapperConfig`` (the same
flattening the node declares its parameters with). A description is taken,
first found, from the node's parameter descriptors, the trailing comment of
the key in ``config/hybrid.yaml``, or the comment on (or just above) the
field in the dataclass source.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's dsg_ros, not whichever one is installed

from dsg_ros.config import flatten, to_mapping  # noqa: E402
from dsg_ros.mapping import MapperConfig  # noqa: E402
from dsg_ros.ros.params import _MAPPER_DOCS, _NODE_DOCS, NodeSettings  # noqa: E402

OUT = REPO / "docs" / "parameters.md"
YAML = REPO / "config" / "hybrid.yaml"
FIELD = re.compile(r"^\s+(\w+)\s*:[^=#]*(?:=\s*[^#]*)?(?:#\s*(.*))?$")


def yaml_comments(path: Path) -> dict[str, tuple[str, str]]:
    """Dotted key → (value as written, trailing comment) of a ROS parameters file."""
    out: dict[str, tuple[str, str]] = {}
    stack: list[tuple[int, str]] = []  # (indent, key)
    for line in path.read_text().splitlines():
        m = re.match(r"^(\s*)([\w/*]+):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key, value, comment = len(m.group(1)), m.group(2), m.group(3), m.group(4) or ""
        while stack and stack[-1][0] >= indent:
            stack.pop()
        names = [k for _, k in stack if k not in ("/**", "ros__parameters")]
        if value:
            out[".".join(names + [key])] = (value, comment)
        stack.append((indent, key))
    return out


# Fields that no descriptor, config comment or source comment explains.
FALLBACK = {
    "registration.enabled": "align every cloud to the map before it is placed (off: odometry places it)",
    "registration.max_iterations": "ICP iterations at most",
    "registration.min_correspondence_m": "the correspondence bound's final value",
    "registration.max_points": "points kept after thinning, at most",
    "calibration.solver": "the inner solve of a calibration step (as solver)",
    "calibration.bounds.odom_scale": "learned odometry scale kept in [low, high]",
    "calibration.bounds.odom_linear_bias_m_s": "learned linear velocity bias kept within ± this [m/s]",
    "calibration.bounds.odom_angular_bias_deg_s": "learned angular-rate bias kept within ± this [deg/s]",
    "calibration.bounds.extrinsic_translation_m": "learned extrinsic correction kept within ± this [m]",
    "calibration.bounds.extrinsic_rotation_deg": "learned extrinsic correction kept within ± this [deg]",
    "calibration.bounds.sigma_scale": "learned noise scales kept in [low, high]",
    "calibration.bounds.time_offset_s": "learned odometry-cloud time offset kept within ± this [s]",
}


def source_comments(cls: type, prefix: str = "") -> dict[str, str]:
    """Dotted field name → the comment on or above it in the dataclass source,
    for ``cls`` and its nested dataclasses. A field right below a commented one
    (no blank line between) shares that comment: "as <the field above>"."""
    out: dict[str, str] = {}
    above: list[str] = []
    group: str | None = None  # the commented field a run of uncommented ones follows
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        lines = []
    for line in lines[1:]:
        stripped = line.strip()
        if not stripped:
            above, group = [], None
            continue
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            group = None
            continue
        m = FIELD.match(line)
        if m and not stripped.startswith(("def ", "@", '"""', "return", "raise", "if ", "for ")):
            name = m.group(1)
            own = (m.group(2) or " ".join(above)).strip()
            if own:
                out[prefix + name] = own
                group = name if not m.group(2) else None
            elif group is not None:
                out[prefix + name] = f"with `{group}` (above)"
        above = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(source_comments(hints[f.name], f"{prefix}{f.name}."))
    return out


def fmt(value) -> str:
    """A default as it is written in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return value or '""'
    return repr(value)


def plain(value):
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def rows_for(defaults: dict[str, object], describe, in_yaml: dict[str, tuple[str, str]], prefix: str) -> list[str]:
    rows = []
    for name, default in defaults.items():
        description, constraint = describe(name)
        if isinstance(constraint, tuple) and constraint and isinstance(constraint[0], str):
            description += f" (one of: {', '.join(constraint)})"
        elif isinstance(constraint, tuple):
            description += f" (range {constraint[0]} to {constraint[1]})"
        key = prefix + name
        shipped = ""
        if key in in_yaml:
            written = yaml.safe_load(in_yaml[key][0])
            shipped = "yes" if written == plain(default) or (written in (None, "") and default == "") else f"`{fmt(written)}`"
        rows.append(f"| `{key}` | `{fmt(default)}` | {shipped} | {description.replace('|', '/')} |")
    return rows


def render() -> str:
    in_yaml = yaml_comments(YAML)
    from_source = source_comments(MapperConfig)
    node_defaults = {f.name: f.default for f in dataclasses.fields(NodeSettings)}
    mapper_defaults = {k: tuple(v) if isinstance(v, list) else v for k, v in flatten(to_mapping(MapperConfig())).items()}

    def node_doc(name):
        return _NODE_DOCS[name]

    def mapper_doc(name):
        if name in _MAPPER_DOCS:
            return _MAPPER_DOCS[name]
        text = in_yaml.get("mapper." + name, ("", ""))[1] or from_source.get(name, "")
        if not text or text.startswith("with `"):
            text = FALLBACK.get(name, text)
        if name.startswith("calibration.solver."):  # the calibration step's own SolverConfig
            generic = name[len("calibration."):]
            text = "calibration step: " + (FALLBACK.get(generic) or from_source.get(generic, ""))
        return text, None

    header = [
        "# Node parameters",
        "",
        "Generated by `python docs/parameters.py` from `NodeSettings` and `MapperConfig`; do not edit by hand.",
        "",
        "Every parameter is declared read-only and read once at start. `ros2 param describe /dsg_mapper NAME`",
        "prints the same description. The `mapper.*` tree is `MapperConfig`: `dsg-ros replay --params-file` and",
        "`dsg-ros run-sim --config` (section `mapper:`) read the same names. Column *in hybrid.yaml*: the shipped",
        "`config/hybrid.yaml` sets it (and to what, where it differs from the default); other parameters keep",
        "their defaults. A double needs a decimal point in YAML (`10.0`, not `10`).",
        "",
        "## The node",
        "",
        "| parameter | default | in hybrid.yaml | what it does |",
        "|---|---|---|---|",
    ]
    body = rows_for(node_defaults, node_doc, in_yaml, "")
    body += ["", "## The mapper (`mapper.*`)", "", "| parameter | default | in hybrid.yaml | what it does |", "|---|---|---|---|"]
    body += rows_for(mapper_defaults, mapper_doc, in_yaml, "mapper.")
    return "\n".join(header + body) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/parameters.py")
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
