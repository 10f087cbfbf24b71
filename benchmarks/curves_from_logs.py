"""Plot hallucination against training time from the memorisation benchmarks' logs.

::

    python benchmarks/curves_from_logs.py "MoME=benchmarks/results/real_backbone_table_1k/run_mome.log" \\
        "LoRA=benchmarks/results/real_backbone_table_1k/run_lora.log" --out curves.png

Each log is a ``benchmarks/real_backbone_table.py`` or ``benchmarks/mome_memorisation.py`` run; its lines
``  epoch E train Ss hallucination H`` (one per validation) are the points. Training time excludes
validation (:class:`benchmarks.mome_memorisation.TrainClock`), so runs with different validation costs
compare on the same axis. Writes the PNG atomically and refuses to overwrite an existing one.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoding.errors import UserError, run_cli  # noqa: E402
from decoding.run_folder import atomic_savefig  # noqa: E402

POINT = re.compile(r"^\s*epoch (\d+) train (\d+(?:\.\d+)?)s hallucination (\d+(?:\.\d+)?)\s*$")


def read_points(log: Path) -> list[tuple[int, float, float]]:
    """``(epoch, training seconds, hallucination rate)`` per validation in ``log``, in file order."""
    if not log.is_file():
        raise UserError(f"log {log} does not exist: pass LABEL=PATH of a benchmark run's log")
    text = log.read_text(errors="replace").replace("\r", "\n")
    points = [(int(m[1]), float(m[2]), float(m[3])) for m in map(POINT.match, text.splitlines()) if m]
    if not points:
        raise UserError(f"log {log} has no 'epoch E train Ss hallucination H' lines: is it a benchmark log?")
    return points


def plot(runs: dict[str, list[tuple[int, float, float]]], out: Path, title: str) -> None:
    """One line per run: hallucination (%) against training minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, points in runs.items():
        ax.plot([p[1] / 60 for p in points], [100 * p[2] for p in points], marker="o", ms=3, label=label)
    ax.set(xlabel="training time, validation excluded (min)", ylabel="hallucination (%)", title=title)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=120, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="LABEL=PATH of a benchmark log")
    p.add_argument("--out", type=Path, required=True, help="PNG to write (must not exist)")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    if args.out.exists():
        raise UserError(f"--out {args.out} exists: pass a new file name or remove it")
    runs = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise UserError(f"run {spec!r} is not LABEL=PATH: e.g. MoME=runs/x/run_mome.log")
        runs[label] = read_points(Path(path))
    plot(runs, args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main, None, "curves_from_logs")
