"""``pta-load --plot``: throughput and latency over time as a PNG (matplotlib, Agg backend).

matplotlib is a development dependency (``pip install matplotlib``): it is imported only
when a plot is asked for, and its absence is reported as ``PlotUnavailable``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PlotUnavailable", "plot_timeline"]


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed: `pip install matplotlib` (a dev dependency) to plot."""


def plot_timeline(result: dict[str, Any], path: Path, title: str = "pta-load") -> None:
    """Draw ``result["timeline"]`` (a ``pta-load --json`` document): completions and
    unexpected errors per second above, latency p50/p99/max per second below (log scale).
    Raises ``PlotUnavailable`` without matplotlib, ``OSError`` if the file cannot be written.
    """
    try:
        import matplotlib as mpl

        mpl.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(str(PlotUnavailable.__doc__)) from exc

    timeline = result["timeline"]
    t = [row["t_s"] for row in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5), layout="constrained")
    top.plot(t, [row["completed"] for row in timeline], label="completed/s", drawstyle="steps-post")
    top.plot(t, [row["unexpected"] for row in timeline], label="unexpected/s", color="tab:red")
    if result.get("rate_rps"):
        top.axhline(result["rate_rps"], color="grey", linestyle="--", label="offered rate")
    top.set_ylabel("requests per second")
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        points = [(row["t_s"], row[key]) for row in timeline if row[key] is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            bottom.plot(xs, ys, label=label, marker=".", linewidth=1)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("time since start (s), per 1 s interval")
    bottom.legend(loc="upper right")
    bottom.grid(alpha=0.3, which="both")
    latency = result.get("latency_ms") or {}
    mode = (
        f"open loop {result['rate_rps']:g}/s"
        if result["mode"] == "open"
        else f"closed loop, concurrency {result['concurrency']}"
    )
    fig.suptitle(
        f"{title}: {mode}, {result['requests']} requests, "
        f"{result['throughput_rps']:.0f}/s, p99 {latency.get('p99', float('nan')):.1f} ms, "
        f"{result['unexpected_errors']} unexpected"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
