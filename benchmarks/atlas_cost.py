"""What the mode atlas costs: time by stage and peak memory, for 2,000 digit images on the CPU.

    python benchmarks/atlas_cost.py               # both models, k = 8, median of 3 (4 to 6 min on 2 shared cores)
    python benchmarks/atlas_cost.py --k 8 32      # also k = 32 (a 32-row figure: about 12 min in all)
    python benchmarks/atlas_cost.py --quick       # one round, no memory (about 2 min)
    python benchmarks/atlas_cost.py --threads 1   # torch and BLAS on one thread: steadier on a shared CPU

Images: the 1,797 embedded digits (``load_digits_images``) plus their first 203 shifted one pixel to the
right (the leftmost column repeated), 2,000 in all; the copies keep their labels. Two models, random
weights (seed 0), no download:

- ``demo``: the demo's ``DigitsBarlowTwins()`` on 16x16 grayscale images, features at the point
  ``projection_head`` (``feature_fn=point_features("projection_head")``, 64-d);
- ``resnet18``: torchvision's ``resnet18()`` with ``fc = nn.Identity()`` on the same images resized to
  32x32 and repeated to 3 channels, features from the backbone output (512-d).

Per model and k, after one whole atlas as a warm-up, ``--repeats`` rounds of one timed call of each stage
as ``mode_atlas`` runs it (batches of 256, eval mode, no gradients, labels given so the AUC columns are
computed); the table gives each stage's median, the lines under it each stage's range:

- plain forward: ``model(batch)`` over the 2,000 images outside the atlas, for comparison;
- atlas forward: ``model_features`` (what ``mode_atlas`` runs on a model);
- eigh: ``mode_coordinates`` (centring, float64 covariance, ``np.linalg.eigh``, projection);
- descriptors: ``image_descriptors`` + ``describe_modes`` (correlations and one-vs-rest AUCs);
- figure: ``plot_atlas`` with 8 images per side, saved as PNG;
- total: ``mode_atlas(model, images, k=k, labels=labels, output_dir=tmp)``, CSV and figure included.

During one extra ``mode_atlas`` call a forward hook on the model counts its calls and the images they
see, and a wrapper counts ``np.linalg.eigh`` calls: the claim checked is "one forward pass over the
image set plus one eigendecomposition".

Peak memory: torch's CPU allocations are invisible to tracemalloc, so each measurement runs in a fresh
subprocess. After the imports, the model and images are built and a small atlas has run (matplotlib,
scikit-learn and the kernels loaded), the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``);
the figure is ``VmHWM`` after the call minus ``VmRSS`` before it. Where the reset is not allowed it falls
back to ``ru_maxrss`` after minus before (then an earlier, higher peak hides the call's: a lower bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

IMAGES = 2_000
BATCH = 256  # mode_atlas's default batch_size
PER_SIDE = 8  # mode_atlas's default per_side


@dataclass
class Case:
    """One model, its images and labels, and the feature_fn the atlas is given."""

    name: str
    point: str
    model: nn.Module
    images: Tensor
    labels: Tensor
    feature_fn: Callable[[nn.Module, Tensor], Tensor] | None


def digits(size: int, channels: int, n: int = IMAGES) -> tuple[Tensor, Tensor]:
    """The 1,797 digits plus the first ``n - 1797`` shifted one pixel right (leftmost column repeated)."""
    from lightning_stepwise.data import load_digits_images

    images, labels = load_digits_images(size=size, channels=channels)
    extra = n - len(images)
    if extra <= 0:
        return images[:n], labels[:n]
    if extra > len(images):
        raise ValueError(f"at most {2 * len(images)} images (each digit and one shifted copy), got {n}")
    # A deterministic, label-preserving copy: a shift changes pixels, so no two images are equal rows.
    shifted = images[:extra].clone()
    shifted[..., 1:] = images[:extra, ..., :-1]
    return torch.cat([images, shifted]), torch.cat([labels, labels[:extra]])


def build(name: str, n: int = IMAGES) -> Case:
    torch.manual_seed(0)  # the same random weights in every process
    if name == "demo":
        from lightning_stepwise.demo import DigitsBarlowTwins
        from lightning_stepwise.probe import point_features

        images, labels = digits(16, 1, n)
        return Case("demo DigitsBarlowTwins, 16x16x1", "projection_head", DigitsBarlowTwins(), images, labels,
                    point_features("projection_head"))
    if name == "resnet18":
        from torchvision.models import resnet18

        model = resnet18()  # weights=None: random, nothing downloaded
        model.fc = nn.Identity()
        images, labels = digits(32, 3, n)
        return Case("torchvision ResNet-18, 32x32x3", "backbone output", model, images, labels, None)
    raise ValueError(f"unknown model {name!r}")


def plain_forward(case: Case) -> Tensor:
    """The model over the images as a user would run it: batches of 256, eval mode, no gradients."""
    case.model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(case.images), BATCH):
            out.append(case.model(case.images[start:start + BATCH]))
    return torch.cat(out)


@contextmanager
def counting(case: Case) -> Iterator[dict[str, int]]:
    """Counts the model's forward calls, the images they see, and ``np.linalg.eigh`` calls, in the block."""
    counts = {"forward_calls": 0, "images_seen": 0, "eigh_calls": 0}

    def hook(_module: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
        counts["forward_calls"] += 1
        counts["images_seen"] += len(args[0])

    eigh = np.linalg.eigh

    def counted_eigh(*args: Any, **kwargs: Any) -> Any:
        counts["eigh_calls"] += 1
        return eigh(*args, **kwargs)

    handle = case.model.register_forward_hook(hook)
    np.linalg.eigh = counted_eigh  # atlas.py looks it up at call time, so the wrapper sees every call
    try:
        yield counts
    finally:
        np.linalg.eigh = eigh
        handle.remove()


def measure_times(case: Case, k: int, repeats: int) -> dict[str, Any]:
    from lightning_stepwise.atlas import (
        describe_modes,
        image_descriptors,
        mode_atlas,
        mode_coordinates,
        model_features,
        plot_atlas,
    )

    x = case.images.to(torch.float64)  # what mode_atlas hands to the descriptors and the figure
    with tempfile.TemporaryDirectory() as folder:
        figure = Path(folder) / "atlas.png"

        def total() -> object:
            return mode_atlas(case.model, case.images, k=k, labels=case.labels, feature_fn=case.feature_fn,
                              batch_size=BATCH, output_dir=folder)

        # The counted call is also the warm-up of every stage (lazy imports, first-call allocations, kernels),
        # so no stage pays for it in its timings.
        with counting(case) as counts:
            total()
        features = model_features(case.model, case.images, case.feature_fn, BATCH)
        modes = mode_coordinates(features, k)
        rows = describe_modes(modes, image_descriptors(x), case.labels)
        stages: dict[str, Callable[[], object]] = {
            "plain_forward": lambda: plain_forward(case),
            "atlas_forward": lambda: model_features(case.model, case.images, case.feature_fn, BATCH),
            "eigh": lambda: mode_coordinates(features, k),
            "descriptors": lambda: describe_modes(modes, image_descriptors(x), case.labels),
            "figure": lambda: plot_atlas(x, modes, PER_SIDE, figure, rows=rows),
            "total": total,
        }
        # Rounds of one call per stage, not all repeats of one stage in a row: on a shared CPU a burst of
        # load then spreads over the stages instead of inflating one of them.
        times: dict[str, list[float]] = {name: [] for name in stages}
        for _ in range(repeats):
            for name, fn in stages.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        out: dict[str, Any] = {name: statistics.median(values) for name, values in times.items()}
        out["range"] = {name: (min(values), max(values)) for name, values in times.items()}
        out["d"] = features.shape[1]
    return out | counts


def _status_kib() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                values[key] = int(value.split()[0])
    return values


def child_memory(name: str, k: int, what: str) -> dict[str, Any]:
    """Peak RSS increase (MiB) of one plain forward pass or one atlas, in this (fresh) process."""
    from lightning_stepwise.atlas import mode_atlas

    case = build(name)
    with tempfile.TemporaryDirectory() as folder:
        def run() -> object:
            if what == "forward":
                return plain_forward(case)
            return mode_atlas(case.model, case.images, k=k, labels=case.labels, feature_fn=case.feature_fn,
                              batch_size=BATCH, output_dir=folder)

        # Warm: the lazy imports (matplotlib, scikit-learn), the PNG writer and the kernels, on 64 images
        # (one mode, one image a side: a small figure, but the same code paths).
        mode_atlas(case.model, case.images[:64], k=1, labels=case.labels[:64], feature_fn=case.feature_fn,
                   per_side=1, output_dir=folder)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # Linux: resets VmHWM (and ru_maxrss) to the current RSS
            reset = True
        except OSError:
            reset = False
        if reset:
            method = "VmHWM after - VmRSS before (peak reset)"
            before = _status_kib()["VmRSS"]
            run()
            after = _status_kib()["VmHWM"]
        else:
            method = "ru_maxrss after - before (no peak reset: lower bound)"
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            run()
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (after - before) / 1024, "method": method}


def memory(name: str, k: int, what: str, threads: int | None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", name, str(k), what]
    command += ["--threads", str(threads)] if threads else []
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {name} k={k} {what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo", "resnet18"], choices=["demo", "resnet18"])
    parser.add_argument("--k", type=int, nargs="+", default=[8], help="modes described (8; 32 draws 32 rows)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--quick", action="store_true", help="one round, no memory: --repeats 1 --no-memory")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and BLAS threads (default: their own choice; 1 is steadier on a shared CPU)")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "K", "WHAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.no_memory = 1, True
    if args.threads:
        from threadpoolctl import threadpool_limits  # scikit-learn's dependency

        torch.set_num_threads(args.threads)
        # NumPy's BLAS (the eigendecomposition) too: its threads spin against torch's on a busy CPU.
        threadpool_limits(args.threads)
    if args.child:
        name, k, what = args.child
        print(json.dumps(child_memory(name, int(k), what)))
        return

    from threadpoolctl import threadpool_info

    blas = max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=0)
    print(f"machine: {cpu_name()} (platform.processor(): {platform.processor() or '-'}), {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, {blas} BLAS threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{IMAGES} images (1,797 digits + 203 shifted copies), batches of {BATCH}, {PER_SIDE} images per side; "
          f"times: median of {args.repeats} rounds after a warm-up, seconds")
    header = ("| model | features (d) | k | plain forward (s) | atlas forward (s) | eigh (s) | descriptors + "
              "correlations (s) | figure (s) | atlas total (s) | total / plain forward | forward calls "
              "(images seen) | eigh calls | peak RSS +, forward (MiB) | peak RSS +, atlas (MiB) |")
    rows, spread, methods = [], [], set()
    for name in args.models:
        case = build(name)
        forward_mib = "-"
        if not args.no_memory:  # k does not matter to a plain forward pass: once per model
            m = memory(name, args.k[0], "forward", args.threads)
            forward_mib = f"{m['peak_mib']:.0f}"
            methods.add(m["method"])
        for k in args.k:
            r = measure_times(case, k, args.repeats)
            atlas_mib = "-"
            if not args.no_memory:
                m = memory(name, k, "atlas", args.threads)
                atlas_mib = f"{m['peak_mib']:.0f}"
                methods.add(m["method"])
            passes = r["images_seen"] / len(case.images)
            rows.append(f"| {case.name} | {case.point} ({r['d']}) | {k} | {r['plain_forward']:.3f} "
                        f"| {r['atlas_forward']:.3f} | {r['eigh']:.4f} | {r['descriptors']:.3f} | {r['figure']:.3f} "
                        f"| {r['total']:.3f} | {r['total'] / r['plain_forward']:.2f} "
                        f"| {r['forward_calls']} ({r['images_seen']}: {passes:.2f} passes) | {r['eigh_calls']} "
                        f"| {forward_mib} | {atlas_mib} |")
            spread.append(f"{name} k={k}: " + ", ".join(f"{stage} {low:.3g}-{high:.3g}"
                                                        for stage, (low, high) in r["range"].items()))
            print(f"  done: {name} k={k}", file=sys.stderr, flush=True)
    print()
    print(header)
    print("|" + " --- |" * header.count(" | ") + " --- |")
    print("\n".join(rows))
    print(f"\nrange over the {args.repeats} rounds (min-max, s):")
    print("\n".join(spread))
    if methods:
        print(f"\npeak memory: {'; '.join(sorted(methods))}, each in a fresh process after warm imports and "
              "model build")


if __name__ == "__main__":
    main()
