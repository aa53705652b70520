"""Draw ``docs/figures/how_it_works.png``: the monitor's path from a hooked module to the run's files.

Run ``python scripts/draw_how_it_works.py`` after changing the monitor's stages.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

STAGES = [  # (x, y, title, lines, colour)
    (0.0, 1.0, "1. Hook",
     ["a forward hook on the embeddings", "(Lightly loss inputs, or module=...)", "no change to your module"],
     "#dbe8f7"),
    (3.2, 1.0, "2. Window",
     ["rows accumulate on the device", "every step, no host sync", "1,024 samples by default"], "#dbe8f7"),
    (6.4, 1.0, "3. Eigensolve",
     ["Gram matrix on the device, copied", "without waiting; eigh in a worker", "thread, off the training loop"],
     "#fde9d9"),
    (6.4, -1.2, "4. Modes",
     ["eigenvalues and directions, each", "mode followed by its direction", "(identity), onset when it reaches",
      "half its plateau"], "#fde9d9"),
    (3.2, -1.2, "5. Loggers",
     ["effective rank, modes learned,", "leading eigenvalues, a line per", "learned mode, progress bar"], "#e2f0d9"),
    (0.0, -1.2, "6. Files",
     ["spectrum.npz / .csv, onsets.csv,", "stepwise.png, probe results", "(rank zero, at fit end)"], "#e2f0d9"),
]
WIDTH, HEIGHT = 2.7, 1.6


FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "how_it_works.png"


def main(path: Path = FIGURE) -> None:
    """Draw the six stages and the arrows between them into ``path``."""
    fig, ax = plt.subplots(figsize=(11, 4.6))
    for x, y, title, lines, colour in STAGES:
        ax.add_patch(FancyBboxPatch((x, y), WIDTH, HEIGHT, boxstyle="round,pad=0.05", fc=colour, ec="#555555"))
        ax.text(x + 0.12, y + HEIGHT - 0.22, title, fontsize=11, fontweight="bold", va="top")
        ax.text(x + 0.12, y + HEIGHT - 0.6, "\n".join(lines), fontsize=8.5, va="top", linespacing=1.35)
    links = [((2.75, 1.8), (3.2, 1.8)), ((5.95, 1.8), (6.4, 1.8)), ((7.75, 1.0), (7.75, 0.45)),
             ((6.4, -0.4), (5.95, -0.4)), ((3.2, -0.4), (2.75, -0.4))]
    for start, end in links:
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="#333333"))
    ax.text(0.0, 2.95, "training step (your loop, unchanged)", fontsize=9, color="#1f4e79")
    ax.text(6.4, 2.95, "once a window is full", fontsize=9, color="#843c0c")
    ax.set_xlim(-0.2, 9.3)
    ax.set_ylim(-1.5, 3.2)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
