"""ModeEqualizer: the gains, the rescaling of the embedding gradient, and the callback inside real Trainers.

The expected gradients are computed here independently: the eigen-directions from NumPy's ``eigh`` of the
covariance of the embeddings (a fixed model, so the spectrum is known), the rescaling as the matrix
``Q = U diag(gain) Uᵀ + (I − U Uᵀ)`` in float64.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_ssl_module, pair_loader, pl_namespace, trainer
from sync_counter import SyncCounter
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_stepwise.equalizer_callback as equalizer_callback
from lightning_stepwise import ModeEqualizer, StepwiseMonitor, StepwiseWarning
from lightning_stepwise.equalizer import (
    DeviceCounts,
    check_equalizer_options,
    equalizer_gains,
    guarded_rescale,
    rescale_gradient,
)
from lightning_stepwise.theory import LinearSSLTheory


def rescaling_matrix(directions: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """``Q`` with ``g' = Q g``: gain along each direction, identity on their orthogonal complement."""
    u = np.asarray(directions, dtype=np.float64)
    return u @ np.diag(gains) @ u.T + (np.eye(u.shape[0]) - u @ u.T)


def orthonormal(d: int, k: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q[:, :k]


# ------------------------------------------------------------------ pure functions


def test_gains_follow_the_formula_and_the_theory():
    eigenvalues = np.array([2.0, 1.0, 0.5, 1e-3, 0.0, -0.1])
    np.testing.assert_allclose(equalizer_gains(eigenvalues, 1.0, 10.0), [1, 2, 4, 10, 1, 1])
    np.testing.assert_allclose(equalizer_gains(eigenvalues, 0.5, 100.0), [1, 2**0.5, 2, 2000**0.5, 1, 1])
    assert equalizer_gains(eigenvalues, 0.0, 10.0).tolist() == [1.0] * 6
    # the same gains as the linear theory's, given its γ as the eigenvalues
    gammas = np.array([1.0, 0.4, 0.05, 0.001])
    theory = LinearSSLTheory(gammas)
    for alpha, cap in [(0.5, 10.0), (1.0, 100.0), (0.3, float("inf"))]:
        np.testing.assert_allclose(equalizer_gains(gammas, alpha, cap), theory.equalizer_gains(alpha, max_gain=cap))
    with pytest.raises(ValueError, match="finite"):
        equalizer_gains([1.0, float("nan")], 0.5, 10.0)


@pytest.mark.parametrize("shape", [(5, 6), (5, 3, 6), (5, 6, 1, 1), (4, 3, 2, 1)])
def test_rescaling_equals_the_projection_formula(shape):
    d = 6
    u = orthonormal(d, 3)
    gains = np.array([1.0, 3.0, 0.5])
    grad = torch.randn(*shape, dtype=torch.float64)
    out = rescale_gradient(grad, torch.from_numpy(u).float(), torch.from_numpy(gains - 1))
    assert out.shape == grad.shape and out.dtype == grad.dtype
    expected = grad.numpy().reshape(-1, d) @ rescaling_matrix(u, gains)  # Q is symmetric
    np.testing.assert_allclose(out.numpy().reshape(-1, d), expected, rtol=1e-6, atol=1e-6)
    # components outside the directions are untouched
    outside = np.eye(d) - u @ u.T
    np.testing.assert_allclose(out.numpy().reshape(-1, d) @ outside, grad.numpy().reshape(-1, d) @ outside,
                               atol=1e-6)


def test_rescaling_keeps_low_precision_gradients_in_their_dtype():
    u = torch.from_numpy(orthonormal(8, 2)).float()
    grad = torch.randn(4, 8).to(torch.bfloat16)
    out = rescale_gradient(grad, u, torch.tensor([0.0, 9.0]))
    assert out.dtype == torch.bfloat16
    expected = grad.float() @ torch.from_numpy(rescaling_matrix(u.double().numpy(), np.array([1.0, 10.0]))).float()
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_non_finite_gradients_are_left_untouched_and_counted():
    u = torch.eye(3)[:, :1]
    counts = torch.zeros(2, dtype=torch.int64)
    nan_grad = torch.tensor([[float("nan"), 1.0, 1.0]])
    assert torch.equal(guarded_rescale(nan_grad, u, torch.tensor([1.0]), counts).isnan(), nan_grad.isnan())
    huge = torch.tensor([[3e38, 1.0, 1.0]])  # finite, but times a gain of 10 it overflows float32
    torch.testing.assert_close(guarded_rescale(huge, u, torch.tensor([9.0]), counts), huge)
    assert counts.tolist() == [1, 1]
    fine = torch.tensor([[1.0, 1.0, 1.0]])
    torch.testing.assert_close(guarded_rescale(fine, u, torch.tensor([9.0]), counts), torch.tensor([[10.0, 1, 1]]))
    assert counts.tolist() == [1, 1]


def test_preserve_norm_keeps_the_norm_and_the_rescaled_direction():
    u = torch.from_numpy(orthonormal(6, 2)).float()
    offsets = torch.tensor([3.0, 9.0])
    grad = torch.randn(5, 6)
    counts = torch.zeros(2, dtype=torch.int64)
    rescaled = rescale_gradient(grad, u, offsets)
    kept = guarded_rescale(grad, u, offsets, counts, preserve_norm=True)
    torch.testing.assert_close(kept.norm(), grad.norm())
    torch.testing.assert_close(kept, rescaled * grad.norm() / rescaled.norm())
    assert torch.equal(guarded_rescale(torch.zeros(5, 6), u, offsets, counts, preserve_norm=True), torch.zeros(5, 6))
    nan_grad = grad.clone()
    nan_grad[0, 0] = float("nan")
    assert torch.equal(guarded_rescale(nan_grad, u, offsets, counts, preserve_norm=True).isnan(), nan_grad.isnan())
    assert counts.tolist() == [1, 0]


def test_device_counts_reach_the_host_once():
    counts = DeviceCounts(2, "cpu")
    assert counts.ready() is None
    counts.values.add_(torch.tensor([2, 1]))
    counts.snapshot()
    assert counts.ready().tolist() == [2, 1]
    assert counts.ready() is None  # taken
    assert counts.read().tolist() == [2, 1]


@pytest.mark.parametrize(("kwargs", "error", "names"), [
    ({"alpha": 1.5}, ValueError, "alpha"),
    ({"alpha": -0.1}, ValueError, "alpha"),
    ({"alpha": float("nan")}, ValueError, "alpha"),
    ({"alpha": "0.5"}, TypeError, "alpha"),
    ({"alpha": True}, TypeError, "alpha"),
    ({"max_gain": 0.0}, ValueError, "max_gain"),
    ({"max_gain": -3}, ValueError, "max_gain"),
    ({"max_gain": 0.5}, ValueError, "max_gain"),
    ({"max_gain": None}, TypeError, "max_gain"),
    ({"update_every_n_measurements": 0}, ValueError, "update_every_n_measurements"),
    ({"update_every_n_measurements": 1.0}, TypeError, "update_every_n_measurements"),
    ({"warmup_steps": -1}, ValueError, "warmup_steps"),
    ({"warmup_steps": "10"}, TypeError, "warmup_steps"),
    ({"point": 3}, TypeError, "point"),
])
def test_bad_options_raise_at_construction_naming_the_parameter(kwargs, error, names):
    with pytest.raises(error, match=rf"ModeEqualizer\({names}=|{names}") as caught:
        ModeEqualizer(**kwargs)
    assert names in str(caught.value)
    assert "Pass" in str(caught.value) or ">=" in str(caught.value) or "takes" in str(caught.value)


def test_good_options_are_accepted():
    check_equalizer_options(0, 1)
    check_equalizer_options(1.0, float("inf"), 3, 5, "criterion")
    equalizer = ModeEqualizer(alpha=np.float32(0.25), max_gain=np.int64(4))
    assert (equalizer.alpha, equalizer.max_gain) == (0.25, 4.0)


def test_a_non_finite_spectrum_switches_the_rescaling_off():
    equalizer = ModeEqualizer(alpha=1.0)
    directions = orthonormal(4, 2).astype(np.float32)
    equalizer._set_spectrum(np.array([2.0, 1.0]), directions, torch.device("cpu"))
    assert equalizer.gains.tolist() == [1.0, 2.0]
    with pytest.warns(StepwiseWarning, match="non-finite eigenvalues"):
        equalizer._set_spectrum(np.array([np.nan, 1.0]), directions, torch.device("cpu"))
    assert equalizer.gains is None and equalizer._spectrum is None
    assert equalizer.problems["non_finite_spectra"] == 1


# ------------------------------------------------------------------ in a Trainer


class FixedEmbedding(pl_namespace("lightning.pytorch").LightningModule):
    """A fixed linear embedding (lr 0) of fixed anisotropic data: a known covariance spectrum.

    Records the raw gradient reaching the embedding (before the equaliser's hook runs) and the
    gradient reaching the linear layer's weight at every step.
    """

    def __init__(self, in_dim: int = 10, out_dim: int = 6, concat_views: bool = False) -> None:
        super().__init__()
        from lightly.loss import BarlowTwinsLoss

        generator = torch.Generator().manual_seed(1)
        self.projection_head = nn.Linear(in_dim, out_dim, bias=False)
        with torch.no_grad():
            self.projection_head.weight.copy_(torch.randn(out_dim, in_dim, generator=generator))
        self.criterion = BarlowTwinsLoss()
        self.concat_views = concat_views
        self.raw: list[list[torch.Tensor]] = []
        self.inputs: list[torch.Tensor] = []
        self.weight_grads: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0, x1 = batch[0]
        if self.concat_views:
            z = self.projection_head(torch.cat([x0, x1]))
            z0, z1 = z.chunk(2)
        else:
            z0, z1 = self.projection_head(x0), self.projection_head(x1)
        # views of the embeddings: their hooks see the gradient before any rescaling at `projection_head`
        z0, z1 = z0.view_as(z0), z1.view_as(z1)
        step: list[torch.Tensor] = [None, None]  # type: ignore[list-item]
        z0.register_hook(lambda g: step.__setitem__(0, g.detach().clone()))
        z1.register_hook(lambda g: step.__setitem__(1, g.detach().clone()))
        self.raw.append(step)
        self.inputs.append(torch.cat([x0, x1]).detach())
        return self.criterion(z0, z1)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.weight_grads.append(self.projection_head.weight.grad.detach().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fixed_loader(n: int = 16, dim: int = 10) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, dim, generator=generator) * torch.logspace(0, -1, dim)
    x1 = x0 + 0.05 * torch.randn(n, dim, generator=generator)
    data = TensorDataset(torch.stack([x0, x1], 1), torch.zeros(n))
    return DataLoader([((a[0], a[1]), y) for a, y in data], batch_size=n, shuffle=False)  # one batch, every step


def known_rescaling(model: FixedEmbedding, equalizer: ModeEqualizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, directions, gains) for ``alpha=1, max_gain=8`` computed independently of the package."""
    # the covariance of both views' embeddings (the window holds one batch)
    x = model.inputs[0].double().numpy()
    rows = x @ model.projection_head.weight.detach().double().numpy().T
    values, vectors = np.linalg.eigh(np.cov(rows, rowvar=False))
    values, vectors = values[::-1], vectors[:, ::-1]
    u = vectors[:, :3]
    gains = np.minimum(values[0] / values[:3], 8.0)
    assert gains.max() > 2  # the checks tell rescaled from untouched
    np.testing.assert_allclose(equalizer.gains, gains, rtol=1e-4)
    return x, u, gains


@pytest.mark.parametrize("concat_views", [False, True])
@pytest.mark.parametrize("point", ["criterion", "projection_head"])
def test_the_gradient_below_the_embedding_is_rescaled_as_specified(concat_views, point):
    model = FixedEmbedding(concat_views=concat_views)
    loader = fixed_loader()
    monitor = StepwiseMonitor(module=point, every_n_steps=1, window=32, mode_directions=3, verbose=False,
                              save_figure=False)
    equalizer = ModeEqualizer(alpha=1.0, max_gain=8.0, preserve_norm=False)
    trainer(max_steps=4, callbacks=[monitor, equalizer]).fit(model, loader)

    x, u, gains = known_rescaling(model, equalizer)

    for step, (raw, weight_grad) in enumerate(zip(model.raw, model.weight_grads, strict=True)):
        g = torch.cat(raw).double().numpy()  # rows of (view 0; view 1), as x
        # off at step 0 (no spectrum yet); from step 1 on, the spectrum of step 0's window
        q = np.eye(6) if step == 0 else rescaling_matrix(u, gains)
        expected = (g @ q).T @ x
        np.testing.assert_allclose(weight_grad.double().numpy(), expected, rtol=2e-4,
                                   atol=2e-5 * np.abs(expected).max())
    assert equalizer.updates == 3  # a new measurement at steps 1, 2, 3
    assert equalizer.problems == dict.fromkeys(equalizer.problems, 0)


@pytest.mark.parametrize("point", ["criterion", "projection_head"])
def test_preserve_norm_rescales_each_view_and_keeps_its_norm(point):
    model = FixedEmbedding()  # the views in two calls: two hooked tensors a step
    monitor = StepwiseMonitor(module=point, every_n_steps=1, window=32, mode_directions=3, verbose=False,
                              save_figure=False)
    equalizer = ModeEqualizer(alpha=1.0, max_gain=8.0)  # preserve_norm by default
    trainer(max_steps=3, callbacks=[monitor, equalizer]).fit(model, fixed_loader())
    x, u, gains = known_rescaling(model, equalizer)
    n = len(x) // 2
    for raw, weight_grad in zip(model.raw[1:], model.weight_grads[1:], strict=True):
        expected = np.zeros_like(weight_grad.double().numpy())
        for view, g in enumerate(raw):
            g = g.double().numpy()
            rescaled = g @ rescaling_matrix(u, gains)
            shrunk = rescaled * np.linalg.norm(g) / np.linalg.norm(rescaled)
            assert np.linalg.norm(rescaled) > 1.2 * np.linalg.norm(g)  # the shrinking is not a no-op here
            expected += shrunk.T @ x[view * n:(view + 1) * n]
        np.testing.assert_allclose(weight_grad.double().numpy(), expected, rtol=2e-4,
                                   atol=2e-5 * np.abs(expected).max())


def test_preserve_norm_must_be_a_bool():
    with pytest.raises(TypeError, match="preserve_norm"):
        ModeEqualizer(preserve_norm=1)  # type: ignore[arg-type]


def state_after(callbacks: list[Any], steps: int = 6) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = make_ssl_module(lr=0.05)
    trainer(max_steps=steps, callbacks=callbacks).fit(model, pair_loader(n=64))
    return model.state_dict()


def test_alpha_zero_leaves_training_unchanged_bit_for_bit():
    def monitor() -> StepwiseMonitor:
        return StepwiseMonitor(every_n_steps=1, window=32, verbose=False, save_figure=False)

    plain = state_after([monitor()])
    zero = state_after([monitor(), ModeEqualizer(alpha=0.0)])
    equalized = state_after([monitor(), ModeEqualizer(alpha=1.0, max_gain=10.0)])
    assert plain.keys() == zero.keys()
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not all(torch.equal(plain[k], equalized[k]) for k in plain)  # the comparison can fail


def test_warmup_steps_keep_the_gradient_untouched():
    def monitor() -> StepwiseMonitor:
        return StepwiseMonitor(every_n_steps=1, window=32, verbose=False, save_figure=False)

    plain = state_after([monitor()], steps=3)
    warm = state_after([monitor(), ModeEqualizer(alpha=1.0, warmup_steps=3)], steps=3)
    assert all(torch.equal(plain[k], warm[k]) for k in plain)


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_no_monitor_is_a_clear_error_at_setup(namespace):
    model = make_ssl_module(namespace)
    with pytest.raises(RuntimeError, match=r"add one, e\.g\. Trainer\(callbacks=\[StepwiseMonitor\(\)"):
        trainer(namespace, max_steps=1, callbacks=[ModeEqualizer()]).fit(model, pair_loader())


@pytest.mark.parametrize(("monitor", "error", "match"), [
    (lambda: StepwiseMonitor(mode_directions=0), RuntimeError, "mode_directions=0"),
    (lambda: StepwiseMonitor(embedding_fn=lambda m, b: m(b[0][0])), ValueError, "embedding_fn"),
])
def test_a_monitor_without_directions_or_hookable_point_is_a_clear_error(monitor, error, match):
    with pytest.raises(error, match=match):
        trainer(max_steps=2, callbacks=[monitor(), ModeEqualizer()]).fit(make_ssl_module(), pair_loader())


def test_an_unknown_point_names_the_tracked_ones():
    with pytest.raises(ValueError, match=r"point='head'.*\['criterion'\]"):
        trainer(max_steps=2, callbacks=[StepwiseMonitor(), ModeEqualizer(point="head")]).fit(
            make_ssl_module(), pair_loader())


class NanAtStepTwo(FixedEmbedding):
    """A non-finite embedding gradient at step 2 (zeroed before the optimizer, so the weights stay finite)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == 2 else loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        super().on_before_optimizer_step(optimizer)
        self.projection_head.weight.grad.nan_to_num_(0.0)


def test_a_non_finite_gradient_is_left_untouched_warned_once_and_counted():
    model = NanAtStepTwo()
    monitor = StepwiseMonitor(every_n_steps=1, window=32, mode_directions=3, verbose=False, save_figure=False)
    equalizer = ModeEqualizer(alpha=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(max_steps=5, callbacks=[monitor, equalizer]).fit(model, fixed_loader())
    ours = [w for w in caught if issubclass(w.category, StepwiseWarning) and "ModeEqualizer" in str(w.message)]
    assert len(ours) == 1 and "non-finite" in str(ours[0].message)
    assert equalizer.problems["non_finite_gradients"] == 2  # counted per hooked tensor: both views of step 2
    assert equalizer.problems["non_finite_rescaled"] == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_step_path_never_waits_on_the_device(monkeypatch):
    # the CPU stand-in of tests/sync_counter.py: ops that would synchronise on a GPU, in the equaliser's code
    counter = SyncCounter(cuda=False)
    equalizer = ModeEqualizer(alpha=1.0)
    for name in ("on_train_batch_start", "on_train_batch_end", "_on_inputs"):
        original = getattr(equalizer, name)

        def watched(*args: Any, _original: Any = original) -> Any:
            with counter.watching():
                return _original(*args)

        setattr(equalizer, name, watched)
    original_hook = equalizer_callback._rescale_hook
    calls = []

    def watched_hook(*args: Any) -> Any:
        calls.append(1)
        with counter.watching():
            return original_hook(*args)

    monkeypatch.setattr(equalizer_callback, "_rescale_hook", watched_hook)
    monitor = StepwiseMonitor(every_n_steps=2, window=32, verbose=False, save_figure=False)
    trainer(max_steps=8, callbacks=[monitor, equalizer]).fit(make_ssl_module(lr=0.01), pair_loader(n=128))
    assert equalizer.updates >= 2 and len(calls) >= 10  # the path was exercised: 2 views x 6 steps
    assert counter.what == [], f"host-device synchronisations in the equaliser's step path: {counter.what[:10]}"


def test_state_dict_restores_the_rescaling_in_force():
    equalizer = ModeEqualizer(alpha=1.0)
    directions = orthonormal(4, 2).astype(np.float32)
    equalizer._set_spectrum(np.array([3.0, 1.0]), directions, torch.device("cpu"))
    restored = ModeEqualizer(alpha=1.0)
    restored.load_state_dict(equalizer.state_dict())
    assert restored._restored is not None
    restored._set_spectrum(restored._restored["eigenvalues"], restored._restored["directions"], torch.device("cpu"))
    assert restored.gains.tolist() == [1.0, 3.0]
