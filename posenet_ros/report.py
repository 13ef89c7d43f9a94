"""Accuracy and latency figures, plausibility warnings and plots shared by ``posenet-ros replay`` and
``posenet-train eval``, and the replay's ``index.html``.

Trajectories are drawn per segment (a sequence, or a stretch of a recording without a time gap), so
nothing draws a line where the camera did not go. matplotlib is imported only when a plot is drawn
(Agg backend: no display on a robot or in CI).
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES = (50, 75, 90, 95, 99)
# (metres, degrees) pairs reported as "fraction of frames within both", by eval and replay alike.
THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))
# A time gap this many times the typical frame period (and at least MIN_GAP_S) starts a new segment.
GAP_FACTOR = 10.0
MIN_GAP_S = 1.0
# Plausibility: ground truth this far outside the model's scene box, or a median error this large, as
# a fraction of the scene's largest extent, gets a warning.
OUTSIDE_FRACTION = 0.5
ERROR_FRACTION = 0.5


def threshold_key(m: float, deg: float) -> str:
    return f"within_{m}m_{deg:g}deg"


def threshold_label(m: float, deg: float) -> str:
    return f"<{m}m,{deg:g}deg"


def threshold_fractions(position_m: np.ndarray, rotation_deg: np.ndarray) -> dict[str, float]:
    p, r = np.asarray(position_m), np.asarray(rotation_deg)
    return {threshold_key(m, deg): float(np.mean((p <= m) & (r <= deg))) for m, deg in THRESHOLDS}


def error_stats(position_m: np.ndarray, rotation_deg: np.ndarray) -> dict[str, float | int]:
    """Median, mean, max and percentiles of position (m) and rotation (deg) errors, and the fraction
    of frames within each of ``THRESHOLDS``."""
    s: dict[str, float | int] = {"frames": len(position_m)}
    for name, v in (("position_m", position_m), ("rotation_deg", rotation_deg)):
        v = np.asarray(v, dtype=np.float64)
        s[f"median_{name}"] = float(np.median(v))
        s[f"mean_{name}"] = float(np.mean(v))
        s[f"max_{name}"] = float(np.max(v))
        for q in PERCENTILES[1:]:
            s[f"p{q}_{name}"] = float(np.percentile(v, q))
    s.update(threshold_fractions(position_m, rotation_deg))
    return s


# -- plausibility --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneBox:
    """Where the model's training cameras were: the contract's scene extent around its position
    offset (the mean training position)."""

    name: str
    centre: np.ndarray
    extent: np.ndarray

    @staticmethod
    def of(contract: Any) -> SceneBox:
        return SceneBox(
            contract.scene.name,
            np.asarray(contract.output.position_offset, dtype=np.float64),
            np.asarray(contract.scene.extent, dtype=np.float64),
        )

    @property
    def size(self) -> float:
        return float(max(self.extent.max(), 1e-3))

    def outside_m(self, positions: np.ndarray) -> np.ndarray:
        """Distance of each position from the box (0 inside)."""
        excess = np.abs(np.asarray(positions, dtype=np.float64) - self.centre) - self.extent / 2
        return np.linalg.norm(np.maximum(excess, 0.0), axis=1)

    def describe(self) -> str:
        ext = " x ".join(f"{v:.1f}" for v in self.extent)
        return f"{self.name!r} ({ext} m around {' '.join(f'{v:.1f}' for v in self.centre)})"


def plausibility_warnings(box: SceneBox, truth: np.ndarray, position_error_m: np.ndarray, hint: str) -> list[str]:
    """One-line warnings when the figures say the data and the model do not belong together: the
    ground truth lies far outside the model's scene, or the errors are a large share of its size.
    ``hint`` is what to check, worded for the command (data set, --gt-frames order)."""
    if not len(truth):
        return []
    warnings = []
    outside = float(np.median(box.outside_m(truth)))
    if outside > OUTSIDE_FRACTION * box.size:
        warnings.append(
            f"the ground truth lies {outside:.1f} m (median) outside the model's scene {box.describe()}: "
            f"the model was trained on another scene, or {hint}"
        )
    median = float(np.median(position_error_m))
    if median > ERROR_FRACTION * box.size:
        warnings.append(
            f"median position error {median:.2f} m is {median / box.size:.0%} of the model's scene size "
            f"({box.size:.1f} m): implausibly large; the model may be from another scene, or {hint}"
        )
    return warnings


# -- segments ------------------------------------------------------------------------------------


def time_segments(stamps_ns: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges of a time series, split where the time between two frames is a
    gap (``GAP_FACTOR`` times the median period and at least ``MIN_GAP_S``)."""
    t = np.asarray(stamps_ns, dtype=np.float64) / 1e9
    if len(t) < 2:
        return [(0, len(t))] if len(t) else []
    dt = np.diff(t)
    limit = max(GAP_FACTOR * float(np.median(dt)), MIN_GAP_S)
    cuts = [0, *(np.nonzero(dt > limit)[0] + 1).tolist(), len(t)]
    return list(itertools.pairwise(cuts))


def label_segments(labels: Sequence[str]) -> list[tuple[int, int]]:
    """[start, stop) index ranges of runs of equal labels (the sequence of each frame)."""
    if not len(labels):
        return []
    cuts = [0, *(i for i in range(1, len(labels)) if labels[i] != labels[i - 1]), len(labels)]
    return list(itertools.pairwise(cuts))


# -- plots ---------------------------------------------------------------------------------------


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
        ax.legend(fontsize=8)


def save_figure(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cdf_axis_limit(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """An axis limit where the mass is (1.3 x the largest p95) and the largest value."""
    top = max(float(np.max(v)) for v in values)
    p95 = max(float(np.percentile(v, 95)) for v in values)
    return (min(top, 1.3 * p95) if p95 > 0 else top or 1.0), top


def plot_error_cdf(series: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Cumulative distribution of position and rotation errors, one line per method, zoomed to where
    the frames are (a note says how many lie beyond), with each method's median and the thresholds
    that eval and replay count marked."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    units = (
        ("position error (m)", "m", [m for m, _ in THRESHOLDS]),
        ("rotation error (deg)", "deg", [d for _, d in THRESHOLDS]),
    )
    for k, (ax, (label_text, unit, marks)) in enumerate(zip(axes, units, strict=True)):
        values = [np.asarray(errors[k], dtype=np.float64) for errors in series.values()]
        limit, top = cdf_axis_limit(values)
        for mark in sorted(set(marks)):
            if mark <= limit:
                ax.axvline(mark, color="0.6", ls=":", lw=1)
                ax.text(mark, 0.02, f" {mark:g} {unit}", color="0.4", fontsize=7, rotation=90, va="bottom")
        for (label, _), v, color in zip(series.items(), values, ("tab:blue", "tab:orange", "tab:green"), strict=False):
            v = np.sort(v)
            median = float(np.median(v))
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), color=color, label=f"{label} (median {median:.3g} {unit})")
            ax.plot([median], [0.5], "o", color=color, ms=5)
        ax.axhline(0.5, color="0.8", lw=0.8)
        ax.set_xlim(0, limit)
        ax.set_ylim(0, 1.02)
        beyond = sum(int(np.sum(v > limit)) for v in values)
        if beyond:
            ax.set_title(f"{beyond} frame(s) beyond {limit:.3g} {unit} not shown (max {top:.3g})", fontsize=8)
        _style(ax, label_text, "fraction of frames")
    fig.suptitle(f"{title}: error CDF")
    return save_figure(plt, fig, path)


def plot_trajectory_top(
    truth: np.ndarray | None,
    estimates: dict[str, np.ndarray],
    path: Path,
    title: str,
    segments: list[tuple[int, int]] | None = None,
) -> Path:
    """Top view (x, y), one segment at a time (no line across a gap). With ground truth, the first
    estimate's points are coloured by their position error and joined to their ground truth; other
    estimates are small crosses; each segment's start and end are marked."""
    plt = pyplot()
    from matplotlib.collections import LineCollection

    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    first = next(iter(estimates.values()), np.zeros((0, 3)))
    n = len(truth) if truth is not None and len(truth) else len(first)
    segments = segments or ([(0, n)] if n else [])
    line_colors = plt.get_cmap("tab10")
    reference = truth if truth is not None and len(truth) else first
    for k, (a, b) in enumerate(segments):
        seg = reference[a:b]
        label = f"sequence {k + 1}" if len(segments) > 1 else "ground truth" if truth is not None else "path"
        color = line_colors(k % 10) if len(segments) > 1 else "k"
        ax.plot(seg[:, 0], seg[:, 1], "-", color=color, lw=1.2, label=label)
        ax.plot(seg[0, 0], seg[0, 1], "^", color=color, ms=9, mec="k", label="start" if k == 0 else None)
        ax.plot(seg[-1, 0], seg[-1, 1], "s", color=color, ms=8, mec="k", label="end" if k == 0 else None)
    if truth is not None and len(truth) and estimates:
        (name, est), *others = estimates.items()
        error = np.linalg.norm(est[:, :2] - truth[:, :2], axis=1) if len(est) == len(truth) else None
        if error is not None:
            joins = LineCollection(np.stack([truth[:, :2], est[:, :2]], axis=1), colors="0.5", lw=0.5, alpha=0.5)
            ax.add_collection(joins)
            full = np.linalg.norm(est - truth, axis=1)
            # The colour scale ends at the 95th percentile so a few outliers do not wash out the rest.
            vmax = max(float(np.percentile(full, 95)), 1e-6)
            points = ax.scatter(
                est[:, 0],
                est[:, 1],
                c=full,
                cmap="plasma",
                vmin=0.0,
                vmax=vmax,
                s=10,
                zorder=3,
                label=f"{name} (colour: error)",
            )
            bar = fig.colorbar(points, ax=ax, shrink=0.8, extend="max" if full.max() > vmax else "neither")
            bar.set_label(f"{name} position error (m)")
        else:
            ax.plot(est[:, 0], est[:, 1], ".", ms=3, label=name)
        for (label, xyz), marker in zip(others, ("x", "+"), strict=False):
            ax.plot(xyz[:, 0], xyz[:, 1], marker, ms=3, color="tab:red", alpha=0.5, label=label)
    elif estimates:
        for label, xyz in estimates.items():
            ax.plot(xyz[:, 0], xyz[:, 1], ".", ms=3, label=label)
    _style(ax, "x (m)", "y (m)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"{title}: top view")
    return save_figure(plt, fig, path)


def plot_error_over_time(
    t_s: np.ndarray,
    position_m: np.ndarray,
    rotation_deg: np.ndarray,
    path: Path,
    title: str,
    segments: list[tuple[int, int]] | None = None,
) -> Path:
    """Errors against time, broken at segment boundaries (dashed lines mark where a sequence starts)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    segments = segments or [(0, len(t_s))]
    for ax, values, color, label in (
        (axes[0], position_m, "tab:blue", "position error (m)"),
        (axes[1], rotation_deg, "tab:orange", "rotation error (deg)"),
    ):
        for a, b in segments:
            ax.plot(t_s[a:b], values[a:b], lw=1, color=color)
        ax.axhline(float(np.median(values)), color="0.4", ls=":", lw=1)
        ax.text(t_s[-1], float(np.median(values)), " median", color="0.4", fontsize=7, va="bottom", ha="right")
        for k, (a, _) in enumerate(segments[1:], start=2):
            ax.axvline(t_s[a], color="0.3", ls="--", lw=1)
            if ax is axes[0]:
                ax.text(t_s[a], ax.get_ylim()[1], f" sequence {k}", fontsize=7, va="top")
        _style(ax, "", label, legend=False)
    axes[1].set_xlabel("time since first frame (s)")
    fig.suptitle(f"{title}: error over time")
    return save_figure(plt, fig, path)


def latency_axis_limit(latency_ms: np.ndarray, budget_ms: float | None = None) -> float:
    """The histogram's right end: all frames, unless a few outliers lie beyond 3 x the p95 (then
    2 x the p95), stretched to show the budget line when the budget is near the mass."""
    p95, top = float(np.percentile(latency_ms, 95)), float(np.max(latency_ms))
    limit = top if top <= 3 * p95 else 2 * p95
    if budget_ms and budget_ms <= 3 * p95:
        limit = max(limit, 1.05 * budget_ms)
    return limit


def plot_latency_histogram(latency_ms: np.ndarray, path: Path, title: str, budget_ms: float | None = None) -> Path:
    """Per-frame latency; a few slow outliers (the first frames, a hiccup) are counted in a note
    instead of squashing the histogram into one bar."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    latency_ms = np.asarray(latency_ms, dtype=np.float64)
    p50, top = float(np.median(latency_ms)), float(latency_ms.max())
    limit = latency_axis_limit(latency_ms, budget_ms)
    shown = latency_ms[latency_ms <= limit]
    ax.hist(shown, bins=40, range=(0, limit), color="tab:blue")
    ax.axvline(p50, color="k", ls=":", label=f"median {p50:.1f} ms")
    if budget_ms and budget_ms <= limit:
        ax.axvline(budget_ms, color="r", ls="--", label=f"budget {budget_ms:g} ms")
    beyond = len(latency_ms) - len(shown)
    ax.set_title(
        f"{title}: latency"
        + (f"\n{beyond} frame(s) above {limit:.1f} ms not shown (max {top:.1f} ms)" if beyond else ""),
        fontsize=10,
    )
    _style(ax, "per-frame latency (ms)", "frames")
    return save_figure(plt, fig, path)


# -- index.html ----------------------------------------------------------------------------------

PAGE_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 1em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.4em 0; }
th, td { border: 1px solid #ccc; padding: 3px 9px; text-align: left; font-size: 0.92em; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; margin: 0.5em 0; }
.tables { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


@dataclass(frozen=True)
class Table:
    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]


def _cell(value: Any, tag: str = "td") -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
    return f"<{tag}{' class=num' if numeric else ''}>{html.escape(text)}</{tag}>"


def _table_html(t: Table) -> str:
    head = "<tr>" + "".join(_cell(h, "th") for h in t.header) + "</tr>\n" if any(t.header) else ""
    body = "\n".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in t.rows)
    return f"<div><h2>{html.escape(t.title)}</h2>\n<table>{head}{body}\n</table></div>"


# Headings and one-line captions of the plots the report knows (others get their file name).
PLOT_CAPTIONS = {
    "trajectory_top": (
        "Trajectory (top view)",
        "One line per sequence, start and end marked; each estimate is coloured by its position error "
        "and joined to its ground truth by a grey line.",
    ),
    "error_over_time": ("Error over time", "Dashed lines: a new sequence starts; dotted: the median."),
    "error_cdf": ("Error distribution", "Zoomed to where the frames are; dots: medians; dotted: the thresholds."),
    "latency_hist": ("Latency", "Per-frame time from image to pose; rare outliers beyond the axis are counted."),
}


def _plot_html(p: Path) -> str:
    heading, caption = PLOT_CAPTIONS.get(p.stem, (p.stem.replace("_", " "), ""))
    text = f"<p>{html.escape(caption)}</p>\n" if caption else ""
    image = f'<p><img src="{html.escape(p.name)}" alt="{html.escape(heading)}"></p>'
    return f"<h2>{html.escape(heading)}</h2>\n{text}{image}"


def write_index_html(
    out: Path,
    title: str,
    tables: Sequence[Table],
    plots: Sequence[Path],
    links: Sequence[str] = (),
    warnings: Sequence[str] = (),
) -> Path:
    """A self-contained page: warnings, the summary tables, links to the data files, the plots."""
    warn = "\n".join(f'<p class="warning">warning: {html.escape(w)}</p>' for w in warnings)
    link_html = " · ".join(f'<a href="{html.escape(name)}">{html.escape(name)}</a>' for name in links)
    images = "\n".join(_plot_html(p) for p in plots)
    page = (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>\n"
        f"<style>{PAGE_STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{warn}\n"
        f'<div class="tables">\n{chr(10).join(_table_html(t) for t in tables)}\n</div>\n'
        f"<p>data: {link_html}</p>\n{images}\n</body></html>\n"
    )
    path = out / "index.html"
    path.write_text(page)
    return path
