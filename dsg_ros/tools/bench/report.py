"""Machine description and the RESULTS.md writer shared by every bench suite."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from dsg_ros import runtime


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    devices = jax.devices()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": runtime.backend(),
        "device": str(devices[0].device_kind) if devices else "none",
        "dtype": str(runtime.default_dtype()),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def section(suite: str) -> str:
    """Where a suite's results go: ``mapping`` on the CPU backend, ``mapping-gpu``
    on a GPU, so figures from a lent accelerator sit beside the CPU ones
    instead of replacing them."""
    backend = runtime.backend()
    return suite if backend == "cpu" else f"{suite}-{backend}"


def write(output_dir: str | Path, suite: str, results: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``results/<section>.json`` and replace the section of RESULTS.md
    (``section(suite)``: the suite's name, suffixed with the backend off CPU)."""
    suite = section(suite)
    out = Path(output_dir)
    (out / "results").mkdir(parents=True, exist_ok=True)
    json_path = out / "results" / f"{suite}.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(json_path)
    md_path = out / "RESULTS.md"
    start, end = f"<!-- {suite}:start -->", f"<!-- {suite}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    new = "# Benchmark results\n\nWritten by `dsg-ros bench <suite>`; each section is replaced when its suite reruns.\n"
    text = md_path.read_text() if md_path.exists() else new
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    md_path.write_text(text)
    return json_path, md_path


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores; JAX {info['jax']} on {info['backend']} "
        f"({info['device']}), {info['dtype']}; Python {info['python']}; {info['date']}."
    )


def heading(suite: str, info: dict[str, Any]) -> list[str]:
    """A section's first Markdown lines: its title and the machine."""
    return [f"## {section(suite)}", "", machine_line(info), ""]


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def goal_table(goals: list[tuple[str, str]]) -> list[str]:
    """Markdown rows: one per (goal with its figure, verdict)."""
    return ["| goal | verdict |", "|---|---|"] + [f"| {g} | {v} |" for g, v in goals]


def finish(output_dir: str | Path, suite: str, results: dict[str, Any], markdown: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Write the suite's JSON and RESULTS.md section, print each goal's verdict; returns ``results`` with the paths."""
    json_path, md_path = write(output_dir, suite, results, markdown)
    results["json_path"], results["markdown_path"] = str(json_path), str(md_path)
    for goal, verdict in results.get("goals", []):
        say(f"{verdict:>6}  {goal}")
    return results
