"""``learning_curves.png`` of an experiment folder: the training and validation
loss, and the validation ATE and ~1 s relation error, per epoch.

matplotlib is imported only when a PNG is drawn: it is the ``plots`` extra.
"""

from __future__ import annotations

from pathlib import Path

from dsg_ros.files import atomic_path
from dsg_ros.learn import experiment as ex


def plot_learning_curves(folder: str | Path) -> Path:
    """Draw ``folder/learning_curves.png`` from its metrics.jsonl, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    lines = ex.read_metrics(folder)
    best = ex.best_line(lines)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, keys, ylabel in (
        (left, ("train_loss", "validation_loss"), "loss"),
        (right, ("validation_ate_m", "validation_rel_1s_m"), "error (m)"),
    ):
        for key in keys:
            points = [(line["epoch"], line[key]) for line in lines if line.get(key) is not None]
            if points:
                axis.plot(*zip(*points), marker=".", label=key)
        if best is not None:
            axis.axvline(best["epoch"], color="grey", linestyle=":", label=f"best (epoch {best['epoch']})")
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize="small")
        axis.grid(alpha=0.3)
    fig.suptitle(folder.name if folder.name else str(folder))
    fig.tight_layout()
    path = folder / ex.CURVES_FILE
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
