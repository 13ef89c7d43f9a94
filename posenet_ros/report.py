"""Accuracy and latency figures and plots shared by ``posenet-ros replay`` and ``posenet-train eval``.

matplotlib is imported only when a plot is drawn (Agg backend: no display on a robot or in CI).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES = (50, 75, 90, 95, 99)


def error_stats(position_m: np.ndarray, rotation_deg: np.ndarray) -> dict[str, float | int]:
    """Median, mean, max and percentiles of position (m) and rotation (deg) errors."""
    s: dict[str, float | int] = {"frames": len(position_m)}
    for name, v in (("position_m", position_m), ("rotation_deg", rotation_deg)):
        v = np.asarray(v, dtype=np.float64)
        s[f"median_{name}"] = float(np.median(v))
        s[f"mean_{name}"] = float(np.mean(v))
        s[f"max_{name}"] = float(np.max(v))
        for q in PERCENTILES[1:]:
            s[f"p{q}_{name}"] = float(np.percentile(v, q))
    return s


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(ax: Any, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend()


def save_figure(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_error_cdf(series: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Cumulative distribution of position and rotation errors, one line per method."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for k, (ax, unit) in enumerate(((axes[0], "position error (m)"), (axes[1], "rotation error (deg)"))):
        for label, errors in series.items():
            v = np.sort(errors[k])
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)
        _style(ax, unit, "fraction of frames")
    fig.suptitle(f"{title}: error CDF")
    return save_figure(plt, fig, path)


def plot_trajectory_top(truth: np.ndarray | None, estimates: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Top view (x, y) of the ground-truth path and the estimated positions."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    if truth is not None and len(truth):
        ax.plot(truth[:, 0], truth[:, 1], "k-", lw=1, label="ground truth")
    for (label, xyz), marker in zip(estimates.items(), (".", "x", "+"), strict=False):
        ax.plot(xyz[:, 0], xyz[:, 1], marker, ms=3, alpha=0.8 if marker == "." else 0.5, label=label)
    _style(ax, "x (m)", "y (m)")
    ax.set_aspect("equal")
    ax.set_title(f"{title}: top view")
    return save_figure(plt, fig, path)


def plot_error_over_time(
    t_s: np.ndarray, position_m: np.ndarray, rotation_deg: np.ndarray, path: Path, title: str
) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    axes[0].plot(t_s, position_m, lw=1)
    _style(axes[0], "", "position error (m)", legend=False)
    axes[1].plot(t_s, rotation_deg, lw=1, color="tab:orange")
    _style(axes[1], "time since first frame (s)", "rotation error (deg)", legend=False)
    fig.suptitle(f"{title}: error over time")
    return save_figure(plt, fig, path)


def plot_latency_histogram(latency_ms: np.ndarray, path: Path, title: str, budget_ms: float | None = None) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(latency_ms, bins=40)
    if budget_ms:
        ax.axvline(budget_ms, color="r", ls="--", label=f"budget {budget_ms:g} ms")
        ax.legend()
    _style(ax, "per-frame latency (ms)", "frames", legend=False)
    ax.set_title(f"{title}: latency")
    return save_figure(plt, fig, path)


def write_index_html(out: Path, title: str, summary_lines: Sequence[str], plots: Sequence[Path]) -> Path:
    """A self-contained page showing the printed summary and the plots next to it."""
    images = "\n".join(f'<p><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"></p>' for p in plots)
    page = (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n<pre>{html.escape(chr(10).join(summary_lines))}</pre>\n"
        f'<p><a href="summary.json">summary.json</a></p>\n{images}\n</body></html>\n'
    )
    path = out / "index.html"
    path.write_text(page)
    return path
