"""The layers of DESIGN.md: dependencies point down only, and the core imports no tools, ROS or plotting.

Layers, top to bottom: ``ros`` and ``bag`` side by side (neither imports the
other) → ``mapping`` → ``learn`` → ``solve`` → ``world``; ``msgs`` serves
``ros`` and ``bag``; the shared root modules (``se3``, ``runtime``, …) import
no layer. ``tools`` and ``cli`` sit above everything and nothing below
imports them. The core (every layer but ``ros``) imports no rclpy or ROS
messages, no matplotlib, no GTSAM and no KISS-ICP.

Two checks per layer:

- at run time, in a fresh interpreter per layer, every module of the layer is
  imported in turn and ``sys.modules`` is checked after each import. One
  process per layer is exact: a forbidden module is in ``sys.modules`` at the
  end exactly if some module of the layer imports it, and the check after
  each import names the first module that does;
- in the source, every import statement, including those inside functions
  (a lazy import is still an import), must not name a forbidden module.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

import dsg_ros

PACKAGE_DIR = Path(dsg_ros.__file__).resolve().parent
CORE = {"world", "solve", "learn", "mapping", "msgs", "bag"}
# Layer → the layers it may import; "shared" is the root modules (se3, runtime, config, …).
MAY_IMPORT: dict[str, set[str]] = {
    "ros": {"mapping", "learn", "solve", "world", "msgs"},
    "bag": {"mapping", "learn", "solve", "world", "msgs"},
    "msgs": set(),
    "mapping": {"learn", "solve", "world"},
    "learn": {"solve", "world"},
    "solve": {"world"},
    "world": set(),
    "shared": set(),
}
ABOVE_ALL = ("dsg_ros.tools", "dsg_ros.cli", "dsg_ros.__main__")
ROS = ("rclpy",)  # and every *_msgs / *_srvs package
ROS_INTERFACE_SUFFIXES = ("_msgs", "_srvs")
NOT_FOR_THE_NODE = ("matplotlib", "gtsam", "kiss_icp")  # plots and the benches' references


def _forbidden_prefixes(layer: str) -> tuple[str, ...]:
    """The modules ``layer`` must not import: the layers it may not, the tools, and (but for ros) ROS."""
    other = sorted(f"dsg_ros.{name}" for name in MAY_IMPORT if name not in MAY_IMPORT[layer] | {layer, "shared"})
    return (*other, *ABOVE_ALL, *NOT_FOR_THE_NODE, *(() if layer == "ros" else ROS))


def _modules(layer: str) -> list[str]:
    """Every module of ``layer``, the package first (``shared``: the root package and its plain modules)."""
    if layer == "shared":
        plain = (m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)]) if not m.ispkg)
        return ["dsg_ros", *sorted(f"dsg_ros.{name}" for name in plain if f"dsg_ros.{name}" not in ABOVE_ALL)]
    package = f"dsg_ros.{layer}"
    found = pkgutil.walk_packages([str(PACKAGE_DIR / layer)], prefix=f"{package}.")
    return [package, *sorted(m.name for m in found)]


def _source(module: str) -> tuple[Path, bool]:
    """The file of ``module`` and whether it is a package's ``__init__``."""
    relative = Path(*module.split(".")[1:])
    package = PACKAGE_DIR / relative / "__init__.py"
    return (package, True) if package.is_file() else (PACKAGE_DIR / relative.with_suffix(".py"), False)


def _forbidden(name: str, prefixes: tuple[str, ...]) -> bool:
    ros_interface = "rclpy" in prefixes and name.split(".")[0].endswith(ROS_INTERFACE_SUFFIXES)
    return ros_interface or any(name == p or name.startswith(p + ".") for p in prefixes)


def _outermost(names: Iterable[str]) -> list[str]:
    """``names`` without the submodules of another one (matplotlib, not matplotlib._api too)."""
    found = set(names)
    return sorted(n for n in found if not any(n.startswith(f + ".") for f in found))


# Imports each module in turn and prints, for each, the modules its import added.
_CHILD = """
import importlib, json, sys
added, seen = {}, set(sys.modules)
for module in json.loads(sys.argv[1]):
    importlib.import_module(module)
    added[module] = sorted(set(sys.modules) - seen)
    seen.update(sys.modules)
print(json.dumps(added))
"""


def _skip_without_ros(layer: str) -> None:
    if layer == "ros" and importlib.util.find_spec("rclpy") is None:
        pytest.skip("rclpy not installed: the ros layer cannot be imported")


@pytest.mark.parametrize("layer", list(MAY_IMPORT))
def test_importing_a_layer_loads_nothing_above_it(layer):
    _skip_without_ros(layer)
    prefixes = _forbidden_prefixes(layer)
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(_modules(layer))], capture_output=True, text=True, timeout=120, cwd=PACKAGE_DIR.parent)
    assert out.returncode == 0, out.stderr
    added: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    bad = {module: _outermost(n for n in names if _forbidden(n, prefixes)) for module, names in added.items()}
    bad = {module: found for module, found in bad.items() if found}
    assert bad == {}, f"{layer} imports what sits above it (module: what importing it loaded)"


def _imports(module: str) -> list[tuple[int, str]]:
    """(line, module name) of every import statement in ``module``'s source, at any depth."""
    path, is_package = _source(module)
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] if node.level else [])
            parent = ".".join(p for p in (base, node.module or "") if p)
            # `from a import b` may import the module a.b: both names count.
            names += [(node.lineno, parent)] + [(node.lineno, f"{parent}.{alias.name}") for alias in node.names]
    return names


@pytest.mark.parametrize("layer", list(MAY_IMPORT))
def test_no_import_statement_names_a_layer_above(layer):
    prefixes = _forbidden_prefixes(layer)
    bad = [
        f"{_source(m)[0].relative_to(PACKAGE_DIR.parent)}:{line}: {name}"
        for m in _modules(layer)
        for line, name in _imports(m)
        if _forbidden(name, prefixes)
    ]
    assert bad == [], f"{layer} imports what sits above it:\n" + "\n".join(bad)


def test_every_package_has_a_layer():
    """A new folder must take a place in the layers (or under tools) before it can hold code."""
    packages = {m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)]) if m.ispkg}
    assert packages == set(MAY_IMPORT) - {"shared"} | {"tools"}


def test_the_core_is_every_layer_but_ros_and_imports_no_ros():
    assert set(MAY_IMPORT) - {"ros", "shared"} == CORE
    assert all("rclpy" in _forbidden_prefixes(layer) and "dsg_ros.ros" in _forbidden_prefixes(layer) for layer in CORE | {"shared"})
