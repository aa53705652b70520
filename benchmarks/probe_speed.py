"""Linear-probe speed: feature extraction and classifier fit for 10,000 samples × 2,048 features.

The encoder is a small CNN whose last block gives 128 channels × 4 × 4 = 2,048 features per 32×32 image
(digits, upsampled and jittered to 10,000 images). The probe is trained on 7,000 images and validated on
3,000, with 10 classes. The script prints the extraction time, the fit time of each classifier
(logistic, L-BFGS; ridge, closed form) and the time of the accuracy-per-modes table. (No accuracy is
printed: the 10,000 images are jittered copies of the 1,797 digits, so both splits share digits.)

    python benchmarks/probe_speed.py [--samples 10000] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_stepwise.data import load_digits_images
from lightning_stepwise.probe import extract_features, fit_linear_probe


def encoder() -> nn.Module:
    """Conv backbone: 32×32 → 128 × 4 × 4 = 2,048 features."""
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(1, 32), *block(32, 64), *block(64, 128), nn.Flatten())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, labels = load_digits_images(size=32)
    repeats = -(-args.samples // len(images))
    x = images.repeat(repeats, 1, 1, 1)[: args.samples]
    x = x + 0.1 * torch.randn_like(x)
    y = labels.repeat(repeats)[: args.samples]
    cut = int(0.7 * args.samples)
    train = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=512)
    val = DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=512)
    net = encoder()

    start = time.perf_counter()
    train_features = extract_features(net, train, feature_fn=lambda m, batch: m(batch))
    val_features = extract_features(net, val, feature_fn=lambda m, batch: m(batch))
    extraction = time.perf_counter() - start
    width = train_features[0].shape[1]

    rows = []
    for method in ("logistic", "ridge"):
        start = time.perf_counter()
        fit_linear_probe(*train_features, *val_features, method=method, modes=False)
        rows.append((method, time.perf_counter() - start))
    start = time.perf_counter()
    with_modes = fit_linear_probe(*train_features, *val_features, method="ridge", modes=True)
    modes_time = time.perf_counter() - start

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"{args.samples} samples × {width} features ({cut} train / {args.samples - cut} validation), 10 classes")
    print("| step | seconds |")
    print("| --- | --- |")
    print(f"| feature extraction (CNN, no grad, eval mode) | {extraction:.2f} |")
    for method, seconds in rows:
        print(f"| fit: {method} | {seconds:.2f} |")
    print(f"| ridge + accuracy per modes ({len(with_modes['modes'])} mode counts) | {modes_time:.2f} |")


if __name__ == "__main__":
    main()
