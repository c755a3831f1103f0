"""The soak's two PNGs: p99 latency per endpoint per minute, and memory over time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

MIB = 1024 * 1024


def latency_png(
    path: Path, bucket_s: float, p99_ms: Mapping[str, Sequence[tuple[int, float]]]
) -> None:
    """One line per endpoint: (bucket, p99 ms) at the bucket's middle, in minutes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    for endpoint, points in p99_ms.items():
        xs = [(b + 0.5) * bucket_s / 60 for b, _ in points]
        ax.plot(xs, [ms for _, ms in points], marker="o", label=endpoint)
    ax.set_xlabel("minutes into the soak")
    ax.set_ylabel("p99 latency (ms, log scale)")
    ax.set_yscale("log")
    ax.set_title(f"soak: p99 per endpoint per {bucket_s:.0f} s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def memory_png(path: Path, times_s: Sequence[float], series: Mapping[str, Sequence[int]]) -> None:
    """One line per process (RSS) and one for Redis's `used_memory`, in MiB over minutes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    minutes = [t / 60 for t in times_s]
    for name, values in series.items():
        style = "-" if name.startswith("Redis") else "--" if "gateway" in name else ":"
        ax.plot(minutes, [v / MIB for v in values], style, label=name)
    ax.set_xlabel("minutes into the soak")
    ax.set_ylabel("MiB")
    ax.set_title("soak: RSS of every service process and Redis used_memory")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
