"""PNG plots of a run: loss curves, metric curves, confusion matrix (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    """matplotlib, imported on first use: it costs about a second, and prediction never needs it."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if not history:
        return []
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    written = []
    loss_keys = [k for k in history[0] if k.endswith("loss")]
    metric_keys = [k for k in history[0] if k.startswith("val.") and not k.endswith("loss")]
    for title, keys, filename in (("loss", loss_keys, "loss.png"), ("validation metrics", metric_keys, "metrics.png")):
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            ax.plot(epochs, [row.get(key) for row in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / filename, dpi=100)
        plt.close(fig)
        written.append(folder / filename)
    return written


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str = "confusion matrix (test)") -> Path:
    plt = _pyplot()
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in matrix) or 1
    if len(labels) <= 20:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black",
                        fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
