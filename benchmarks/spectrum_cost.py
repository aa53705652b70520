"""Cost and accuracy of one spectrum at a wide projector: the monitor's Gram route against the naive one.

    python benchmarks/spectrum_cost.py                          # CPU, d = 2048 and 8192
    python benchmarks/spectrum_cost.py --device cuda --naive    # on a GPU, with the d x d eigensolve for contrast

For each width ``d`` a window of ``--window`` float32 embedding rows (a spectrum falling from 1 to 1e-8
over 64 random directions, on a floor) goes through what the monitor does:

- ``accumulate``: copy one step's rows (``--rows-per-step``) into the window's buffer (per captured batch);
- ``Gram``: the ``N x N`` centred Gram matrix in float64, a block of columns at a time (device time);
- ``to host``: one non-blocking copy of the Gram matrix and the counts into pinned memory (device time);
- ``host eigensolve``: ``eigvalsh`` of the ``N x N`` matrix in the monitor's worker thread (host time,
  off the training loop);
- ``naive d x d`` (with ``--naive``): ``eigvalsh`` of the ``d x d`` float64 covariance on the device;

and the accuracy against the float64 reference (``eigvalsh`` of the ``d x d`` float64 covariance of the
same rows on the CPU): the largest relative error over the top 64 eigenvalues that are above 1e-6 of the
largest (the target is <= 1e-6), beside the same number for a float32 Gram matrix. Memory: the
monitor's state for the window and its extra peak while forming the problem (CUDA only).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from lightning_stepwise.accumulators import CovarianceRows


def window_rows(n: int, d: int, device: str, top: int = 64, smallest: float = 1e-8, seed: int = 0) -> torch.Tensor:
    """float32 rows: ``top`` random orthonormal directions with variances 1 ... ``smallest``, plus a floor."""
    g = torch.Generator().manual_seed(seed)
    directions, _ = torch.linalg.qr(torch.randn(d, top, generator=g, dtype=torch.float64))
    scales = torch.logspace(0, math.log10(smallest), top, dtype=torch.float64).sqrt()
    rows = (torch.randn(n, top, generator=g, dtype=torch.float64) * scales) @ directions.T
    rows += math.sqrt(smallest) * 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5
    return rows.float().to(device)


def timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``fn`` (device time on CUDA: synchronised before and after)."""
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def max_relative_error(eigenvalues: torch.Tensor, reference: torch.Tensor) -> float:
    top = reference[:64]
    kept = top > 1e-6 * top[0]
    return float(((eigenvalues[:64].cpu() - top).abs() / top)[kept].max())


def measure(d: int, args: argparse.Namespace) -> dict[str, float]:
    device, n = args.device, args.window
    rows = window_rows(n, d, device)
    batches = rows.split(args.rows_per_step)

    def fill() -> CovarianceRows:
        acc = CovarianceRows(d, capacity=n, device=device)
        for batch in batches:
            acc.update(batch)
        return acc

    scratch = CovarianceRows(d, capacity=n, device=device)

    def accumulate() -> None:
        scratch.filled = 0  # rewrite the same slots: the cost of one captured step
        scratch.update(batches[0])

    out: dict[str, float] = {"d": d, "accumulate_ms": timed(accumulate, device, args.repeats) * 1e3}
    acc = fill()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    problem = acc.problem()
    if device == "cuda":
        torch.cuda.synchronize()
        out["problem_peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    out["state_mib"] = (acc.rows.nbytes + acc.row_weights.nbytes) / 2**20
    out["gram_ms"] = timed(acc.problem, device, args.repeats) * 1e3

    def to_host() -> torch.Tensor:
        flat = problem.flat()
        if device != "cuda":
            return flat
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        return host.copy_(flat, non_blocking=True)

    out["to_host_ms"] = timed(to_host, device, args.repeats) * 1e3
    host_problem = problem.like(to_host())
    if device == "cuda":
        torch.cuda.synchronize()
    out["host_eig_ms"] = timed(host_problem.solve, "cpu", args.repeats) * 1e3
    eigenvalues = host_problem.solve()
    if args.naive:
        x = rows.double()
        cov = torch.cov(x.T)
        out["naive_ms"] = timed(lambda: torch.linalg.eigvalsh(cov), device, max(1, args.repeats // 2)) * 1e3
        del cov, x
    if args.reference:
        start = time.perf_counter()
        reference = torch.linalg.eigvalsh(torch.cov(rows.double().cpu().T)).flip(0)
        out["reference_s"] = time.perf_counter() - start
        out["error"] = max_relative_error(eigenvalues, reference)
        x32 = rows - rows.mean(0)
        gram32 = (x32 @ x32.T).double() / (n - 1)
        out["error_fp32_gram"] = max_relative_error(torch.linalg.eigvalsh(gram32).flip(0), reference)
        out["above_threshold"] = float((reference[:64] > 1e-6 * reference[0]).sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--window", type=int, default=1024, help="samples per spectrum (the monitor's default)")
    parser.add_argument("--rows-per-step", type=int, default=512, help="rows captured per step (batch 256, 2 views)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive", action="store_true", help="also time eigvalsh of the d x d covariance")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the float64 d x d reference (minutes on a small CPU at d = 8192)")
    args = parser.parse_args()
    from overhead import cpu_name  # the benchmarks' folder is on sys.path when run as a script

    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(f"machine: {device}; host {cpu_name()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"window: {args.window} float32 rows, {args.rows_per_step} rows a step; median of {args.repeats}")
    print()
    header = ["d", "accumulate a step (ms)", "Gram (ms)", "to host (ms)", "host eigensolve (ms, worker thread)",
              "state (MiB)"]
    if args.device == "cuda":
        header.append("extra peak forming it (MiB)")
    if args.naive:
        header.append("naive d x d eigvalsh (ms)")
    if args.reference:
        header += ["max rel. error, top 64 above 1e-6 (float64 Gram)", "same, float32 Gram", "reference (s)"]
    rows = []
    for d in args.dims:
        r = measure(d, args)
        row = [f"{d}", f"{r['accumulate_ms']:.2f}", f"{r['gram_ms']:.1f}", f"{r['to_host_ms']:.2f}",
               f"{r['host_eig_ms']:.0f}", f"{r['state_mib']:.1f}"]
        if args.device == "cuda":
            row.append(f"{r['problem_peak_mib']:.0f}")
        if args.naive:
            row.append(f"{r['naive_ms']:.0f}")
        if args.reference:
            row += [f"{r['error']:.1e} ({r['above_threshold']:.0f} eigenvalues)", f"{r['error_fp32_gram']:.1e}",
                    f"{r['reference_s']:.0f}"]
        rows.append(row)
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
