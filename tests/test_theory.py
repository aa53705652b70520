"""The closed-form theory against numerical gradient descent: never against itself."""

import warnings

import numpy as np
import pytest
import torch

from lightning_stepwise.theory import (
    LinearSSLTheory,
    empirical_ntk,
    feature_cross_correlation,
    simplified_barlow_twins_loss,
)


def views(n=400, m=10, noise=0.3, seed=0, scales=None):
    """Two noisy views of the same centred points with a decaying feature spectrum."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, m)) * (np.linspace(2.0, 0.4, m) if scales is None else np.asarray(scales))
    x0 = base + noise * rng.standard_normal((n, m))
    x1 = base + noise * rng.standard_normal((n, m))
    return x0, x1


def gradient_descent(x0, x1, W0, lr, steps, loss_scale=1.0, every=1):
    """Plain full-batch GD on loss_scale * ||C - I||_F^2, C = W Γ W^T, with Γ built here independently."""
    n = len(x0)
    gamma = (x0.T @ x1 + x1.T @ x0) / (2 * n)
    W = np.array(W0, dtype=np.float64)
    d = W.shape[0]
    eigenvalues, losses, recorded = [], [], []
    for step in range(steps + 1):
        C = W @ gamma @ W.T
        if step % every == 0:
            eigenvalues.append(np.sort(np.linalg.eigvalsh(C))[::-1])
            losses.append(loss_scale * ((C - np.eye(d)) ** 2).sum())
            recorded.append(step)
        W = W - lr * loss_scale * 4 * (C - np.eye(d)) @ W @ gamma
    return np.array(recorded), np.array(eigenvalues), np.array(losses), W


def half_crossings(steps, eigenvalues):
    """Interpolated steps at which each sorted eigenvalue first reaches 1/2."""
    out = []
    for j in range(eigenvalues.shape[1]):
        k = int(np.argmax(eigenvalues[:, j] >= 0.5))
        assert k > 0, "mode already above 1/2 at the start"
        lo, hi = eigenvalues[k - 1, j], eigenvalues[k, j]
        out.append(steps[k - 1] + (0.5 - lo) / (hi - lo) * (steps[k] - steps[k - 1]))
    return np.array(out)


def kernel_gradient_descent(kernel, F0, lr, steps):
    """Full-batch GD of a kernel machine in function space, with no features: the outputs F on the stacked
    views [x0; x1] (2n × d) move by -lr K ∂L/∂F, ∂L/∂F = 4 Z F (C - I), C = Fᵀ Z F; Z the pair swap / 2n.

    This is what GD on W does to F = Φ Wᵀ for any features with ΦΦᵀ = K (infinitely many for an RBF kernel).
    """
    n = len(F0) // 2
    F = np.array(F0, dtype=np.float64)
    d = F.shape[1]
    eigenvalues, losses = [], []
    for _ in range(steps + 1):
        swapped = np.concatenate([F[n:], F[:n]]) / (2 * n)  # Z F
        C = F.T @ swapped
        eigenvalues.append(np.sort(np.linalg.eigvalsh(C))[::-1])
        losses.append(((C - np.eye(d)) ** 2).sum())
        F = F - lr * kernel @ (4 * swapped @ (C - np.eye(d)))
    return np.arange(steps + 1), np.array(eigenvalues), np.array(losses), F


def rbf_kernel(points, length):
    sq = (points**2).sum(1)
    return np.exp(-np.maximum(sq[:, None] + sq[None] - 2 * points @ points.T, 0) / (2 * length**2))


def assert_staircase(steps, losses, times, d, atol=0.1):
    """The loss sits at d - k between the k-th and (k+1)-th predicted steps (geometric middle) and at 0 at the end."""
    edges = np.concatenate([[0.0], np.sort(times)])
    for k in range(d):
        at = 0 if k == 0 else int(np.sqrt(edges[k] * edges[k + 1]))
        assert abs(losses[at] - (d - k)) < atol, (k, at, losses[at])
    assert losses[-1] < atol, losses[-1]


@pytest.fixture(scope="module")
def data():
    x0, x1 = views()
    return x0, x1, LinearSSLTheory.from_views(x0, x1)


def test_gammas_are_the_eigenvalues_of_the_symmetrised_cross_correlation(data):
    x0, x1, theory = data
    n = len(x0)
    by_hand = sum(np.outer(a, b) + np.outer(b, a) for a, b in zip(x0, x1, strict=True)) / (2 * n)
    np.testing.assert_allclose(feature_cross_correlation(x0, x1), by_hand, rtol=1e-12)
    np.testing.assert_allclose(theory.gammas, np.sort(np.linalg.eigvalsh(by_hand))[::-1], rtol=1e-10)
    v = theory.eigenvectors
    np.testing.assert_allclose(by_hand @ v, v * theory.gammas, atol=1e-10)
    assert theory.learnable == 10


def test_tensors_are_accepted(data):
    x0, x1, theory = data
    from_tensors = LinearSSLTheory.from_views(torch.tensor(x0, dtype=torch.float32), torch.tensor(x1))
    np.testing.assert_allclose(from_tensors.gammas, theory.gammas, rtol=1e-5)


@pytest.mark.parametrize("lr_factor", [0.025, 0.0025])
def test_aligned_start_step_times_and_trajectories_match_gradient_descent(data, lr_factor):
    x0, x1, theory = data
    d, scale = 5, 1e-3
    lr = lr_factor / theory.gammas[0]
    predicted = theory.step_times(lr, d=d, init_scale=scale)
    W0 = scale * theory.eigenvectors[:, :d].T  # aligned: U = I, S(0) = scale
    steps, eigenvalues, _, _ = gradient_descent(x0, x1, W0, lr, int(predicted.max() * 1.3))
    observed = half_crossings(steps, eigenvalues)
    np.testing.assert_allclose(observed, predicted, rtol=0.01)
    trajectories = theory.eigenvalue_trajectories(steps, lr, d, init_scale=scale)
    np.testing.assert_allclose(np.sort(trajectories, axis=1)[:, ::-1], eigenvalues, atol=0.04)


def test_small_random_start_step_times_come_from_the_qr_route(data):
    x0, x1, theory = data
    rng = np.random.default_rng(1)
    d = 5
    W0 = 1e-4 * rng.standard_normal((d, x0.shape[1]))
    lr = 0.025 / theory.gammas[0]
    predicted = np.sort(theory.step_times(lr, W0=W0))
    steps, eigenvalues, _, _ = gradient_descent(x0, x1, W0, lr, int(predicted.max() * 1.3))
    observed = half_crossings(steps, eigenvalues)
    np.testing.assert_allclose(observed, predicted, rtol=0.03)
    # a plain init-scale guess (s_j = |W0| entry scale) is clearly worse than the QR route
    naive = np.sort(theory.step_times(lr, d=d, init_scale=1e-4))
    assert np.median(np.abs(naive - observed) / observed) > 3 * np.median(np.abs(predicted - observed) / observed)


def test_a_scaled_loss_divides_the_step_times(data):
    x0, x1, theory = data
    d, scale, c = 4, 1e-3, 3.0
    lr = 0.001 / theory.gammas[0]
    predicted = theory.step_times(lr, d=d, init_scale=scale, loss_scale=c)
    steps, eigenvalues, losses, _ = gradient_descent(x0, x1, scale * theory.eigenvectors[:, :d].T, lr,
                                                     int(predicted.max() * 1.3), loss_scale=c)
    np.testing.assert_allclose(half_crossings(steps, eigenvalues), predicted, rtol=0.01)
    unscaled = theory.step_times(lr, d=d, init_scale=scale)
    np.testing.assert_allclose(predicted, unscaled / c, rtol=0.01)  # at small lr: 1/c, as in gradient flow
    np.testing.assert_allclose(theory.loss_curve(steps, lr, d, init_scale=scale, loss_scale=c), losses,
                               atol=0.05 * c)


@pytest.fixture(scope="module")
def separated():
    """Views whose γ differ by about 4× from one mode to the next: well separated steps."""
    x0, x1 = views(m=5, noise=0.1, scales=[3.0, 1.5, 0.75, 0.38, 0.19], seed=7)
    return x0, x1, LinearSSLTheory.from_views(x0, x1)


def test_loss_plateaus_at_d_minus_k(separated):
    x0, x1, theory = separated
    d, scale = 4, 1e-5
    lr = 0.01 / theory.gammas[0]
    times = theory.step_times(lr, d=d, init_scale=scale)
    steps, _, losses, _ = gradient_descent(x0, x1, scale * theory.eigenvectors[:, :d].T, lr, int(times[-1] * 1.5))
    edges = np.concatenate([[0.0], times, [steps[-1]]])
    for k in range(d + 1):
        # between the k-th and (k+1)-th steps (geometric middle, or the ends) k modes are learned
        at = 0 if k == 0 else steps[-1] if k == d else int(np.sqrt(edges[k] * edges[k + 1]))
        assert abs(losses[at] - (d - k)) < 0.1, (k, losses[at])
        assert abs(theory.loss_curve([at], lr, d, init_scale=scale)[0] - (d - k)) < 0.1


def test_final_embedding_is_the_whitened_projection(separated):
    x0, x1, theory = separated
    d = 3
    rng = np.random.default_rng(2)
    W0 = 1e-6 * rng.standard_normal((d, x0.shape[1]))
    lr = 0.02 / theory.gammas[0]
    times = theory.step_times(lr, W0=W0)
    _, eigenvalues, _, W = gradient_descent(x0, x1, W0, lr, int(times.max() * 3))
    np.testing.assert_allclose(eigenvalues[-1], 1.0, atol=1e-6)  # C(∞) = I
    predicted = theory.final_embedding(d)
    # W(∞) is defined up to a left rotation U: compare the rotation-invariant WᵀW (m × m)
    np.testing.assert_allclose(W.T @ W, predicted.T @ predicted, atol=1e-3 * np.abs(predicted.T @ predicted).max())


def test_linear_kernel_theory_from_outputs_predicts_the_linear_model_trained_by_gradient_descent(data):
    # K = XXᵀ over 800 points has rank 10: the kernel route (pseudo-inverse root, QR of F0) against GD on W x
    x0, x1, _ = data
    stacked = np.concatenate([x0, x1])
    with pytest.warns(UserWarning, match="cannot be learned"):  # a rank-10 kernel over 800 points
        kernel_theory = LinearSSLTheory.from_kernel(stacked @ stacked.T)
    assert kernel_theory.learnable == 10
    by_hand = np.linalg.eigvalsh((x0.T @ x1 + x1.T @ x0) / (2 * len(x0)))[::-1]  # Γ's spectrum, NumPy
    np.testing.assert_allclose(kernel_theory.gammas[:10], by_hand, rtol=1e-8)
    rng = np.random.default_rng(11)
    W0 = 1e-4 * rng.standard_normal((4, x0.shape[1]))  # small random, not aligned
    lr = 0.025 / kernel_theory.gammas[0]
    predicted = kernel_theory.step_times(lr, F0=stacked @ W0.T)  # the kernel theory sees only K and F0
    steps, eigenvalues, losses, _ = gradient_descent(x0, x1, W0, lr, int(predicted.max() * 1.5))
    np.testing.assert_allclose(half_crossings(steps, eigenvalues), np.sort(predicted), rtol=0.03)
    # close γ here (steps 10 % apart): no flat plateaus, but the same eigenvalue curves, ending at 1
    trajectories = np.sort(kernel_theory.eigenvalue_trajectories(steps, lr, F0=stacked @ W0.T), axis=1)[:, ::-1]
    np.testing.assert_allclose(trajectories, eigenvalues, atol=0.05)
    np.testing.assert_allclose(eigenvalues[-1], 1.0, atol=0.02)
    assert losses[-1] < 0.01


def test_kernel_theory_predicts_a_kernel_machine_trained_by_gradient_descent():
    # explicit random Fourier features φ give a kernel machine f(x) = W φ(x); the kernel route sees only K = ΦΦᵀ
    x0, x1 = views(n=200, m=4, seed=3)
    rng = np.random.default_rng(4)
    omega, phase = rng.standard_normal((4, 60)), rng.uniform(0, 2 * np.pi, 60)

    def phi(x):
        return np.sqrt(2 / 60) * np.cos(x @ omega + phase)

    f0, f1 = phi(x0), phi(x1)
    f0, f1 = f0 - np.concatenate([f0, f1]).mean(0), f1 - np.concatenate([f0, f1]).mean(0)
    features = np.concatenate([f0, f1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kernel_theory = LinearSSLTheory.from_kernel(features @ features.T)
    d, scale = 3, 1e-3
    lr = 0.02 / kernel_theory.gammas[0]
    predicted = kernel_theory.step_times(lr, d=d, init_scale=scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 60 features, ~50 learnable
        feature_theory = LinearSSLTheory.from_views(f0, f1)
    W0 = scale * feature_theory.eigenvectors[:, :d].T
    steps, eigenvalues, losses, _ = gradient_descent(f0, f1, W0, lr, int(predicted.max() * 1.6))
    np.testing.assert_allclose(half_crossings(steps, eigenvalues), predicted, rtol=0.01)
    # the whole staircase: each eigenvalue's logistic rise and its plateau at 1
    trajectories = kernel_theory.eigenvalue_trajectories(steps, lr, d, init_scale=scale)
    np.testing.assert_allclose(np.sort(trajectories, axis=1)[:, ::-1], eigenvalues, atol=0.04)
    np.testing.assert_allclose(eigenvalues[-1], 1.0, atol=0.02)
    assert losses[-1] < 0.01


def test_kernel_theory_predicts_an_rbf_kernel_machine_from_a_small_random_start():
    # No features at all: a Gaussian-kernel machine trained by GD in function space from random initial
    # outputs F0 (a draw of a small random function, N(0, K) per output: not aligned with any mode)
    x0, x1 = views(n=150, m=4, seed=12, scales=[2.0, 1.2, 0.7, 0.4])
    kernel = rbf_kernel(np.concatenate([x0, x1]), length=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the smallest RBF eigenvalues are rounding: unlearnable
        theory = LinearSSLTheory.from_kernel(kernel)
    d = 3
    values, vectors = np.linalg.eigh(kernel)
    rng = np.random.default_rng(13)
    F0 = 1e-4 * (vectors * np.sqrt(np.maximum(values, 0))) @ rng.standard_normal((len(kernel), d))
    lr = 0.02 / theory.gammas[0]
    predicted = theory.step_times(lr, F0=F0)
    steps, eigenvalues, losses, _ = kernel_gradient_descent(kernel, F0, lr, int(predicted.max() * 1.6))
    np.testing.assert_allclose(half_crossings(steps, eigenvalues), np.sort(predicted), rtol=0.02)
    trajectories = np.sort(theory.eigenvalue_trajectories(steps, lr, F0=F0), axis=1)[:, ::-1]
    np.testing.assert_allclose(trajectories, eigenvalues, atol=0.05)
    np.testing.assert_allclose(eigenvalues[-1], 1.0, atol=0.02)  # each mode plateaus at λ = 1
    assert_staircase(steps, losses, predicted, d)
    # the QR route matters: the plain init-scale guess (s_j = the entries' scale) is clearly worse
    observed = half_crossings(steps, eigenvalues)
    naive = np.sort(theory.step_times(lr, d=d, init_scale=float(np.std(F0))))
    assert np.max(np.abs(naive / observed - 1)) > 5 * np.max(np.abs(np.sort(predicted) / observed - 1))


def test_empirical_ntk_of_linear_models_and_a_network():
    x = torch.randn(6, 3)
    lin = torch.nn.Linear(3, 4)
    np.testing.assert_allclose(empirical_ntk(lin, x).numpy(), (x @ x.T + 1).double().numpy(), atol=1e-5)
    np.testing.assert_allclose(empirical_ntk(lin, x, parameters=["weight"]).numpy(), (x @ x.T).double().numpy(),
                               atol=1e-5)
    # a two-layer network against the Jacobian by autograd, one output at a time
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    rows = []
    for i in range(len(x)):
        grads = []
        for k in range(2):
            net.zero_grad()
            net(x[i : i + 1])[0, k].backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
        rows.append(torch.stack(grads))
    jac = torch.stack(rows).double()
    expected = torch.einsum("adp,bdp->ab", jac, jac) / 2
    torch.testing.assert_close(empirical_ntk(net, x, batch_size=4), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no parameters"):
        empirical_ntk(net, x, parameters=["nope"])


def test_simplified_loss_matches_the_theory_loss(data):
    x0, x1, theory = data
    rng = np.random.default_rng(5)
    W = 0.3 * rng.standard_normal((4, x0.shape[1]))
    gamma = feature_cross_correlation(x0, x1)
    by_formula = ((W @ gamma @ W.T - np.eye(4)) ** 2).sum()
    z0, z1 = torch.tensor(x0 @ W.T), torch.tensor(x1 @ W.T)
    assert float(simplified_barlow_twins_loss(z0, z1)) == pytest.approx(by_formula, rel=1e-10)


def test_unlearnable_modes_are_reported():
    rng = np.random.default_rng(6)
    x0 = rng.standard_normal((300, 4))
    x1 = x0.copy()
    x1[:, 3] = -x1[:, 3]  # anti-correlated along one feature: γ < 0
    with pytest.warns(UserWarning, match="1 of 4 modes have γ ≤ 0"):
        theory = LinearSSLTheory.from_views(x0, x1)
    assert theory.learnable == 3 and theory.gammas[-1] < 0
    lr = 0.01
    times = theory.step_times(lr, d=4, init_scale=1e-3)
    assert np.isinf(times[3]) and np.all(np.isfinite(times[:3]))
    # in gradient descent the three modes with γ > 0 are learned and the anti-correlated one shrinks
    steps, eigenvalues, _, _ = gradient_descent(x0, x1, 1e-3 * theory.eigenvectors.T, lr, int(times[:3].max() * 2))
    np.testing.assert_allclose(half_crossings(steps, eigenvalues[:, :3]), np.sort(times[:3]), rtol=0.02)
    assert np.all(eigenvalues[:, 3] < 0) and abs(eigenvalues[-1, 3]) < 0.5 * abs(eigenvalues[0, 3])
    with pytest.raises(ValueError, match="only 3 modes have γ > 0"):
        theory.final_embedding(4)


@pytest.mark.parametrize("call, message", [
    (lambda th: th.step_times(0.01, d=3), "exactly one of init_scale"),
    (lambda th: th.step_times(0.01, d=3, init_scale=1e-3, W0=np.zeros((3, 10))), "exactly one of init_scale"),
    (lambda th: th.step_times(0.01, W0=np.zeros((3, 7))), "W0 must be d × m"),
    (lambda th: th.step_times(0.01, d=11, init_scale=1e-3), "only 10 modes"),
    (lambda th: th.step_times(-1.0, d=3, init_scale=1e-3), "lr and loss_scale must be > 0"),
    (lambda th: th.step_times(0.01, d=3, init_scale=0.0), "init_scale must be > 0"),
    (lambda th: th.step_times(0.01, init_scale=1e-3), "give d"),
])
def test_bad_arguments_name_the_problem(data, call, message):
    with pytest.raises(ValueError, match=message):
        call(data[2])


def test_bad_views_and_kernels_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        LinearSSLTheory.from_views(np.ones((5, 3)), np.ones((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        LinearSSLTheory.from_views(np.full((5, 3), np.nan), np.ones((5, 3)))
    with pytest.raises(ValueError, match="2n × 2n"):
        LinearSSLTheory.from_kernel(np.eye(3))
    with pytest.raises(ValueError, match="not symmetric"):
        LinearSSLTheory.from_kernel(np.triu(np.ones((4, 4))))
    with pytest.raises(ValueError, match="positive semi-definite"):
        LinearSSLTheory.from_kernel(-np.eye(4))


def test_kernel_qr_route_from_initial_outputs_predicts_a_random_feature_model():
    # f(x) = W φ(x) with random Fourier features, small random W0; the kernel theory gets only K = ΦΦᵀ and F0
    x0, x1 = views(n=150, m=4, seed=8)
    rng = np.random.default_rng(9)
    omega, phase = rng.standard_normal((4, 40)), rng.uniform(0, 2 * np.pi, 40)
    f0, f1 = (np.sqrt(2 / 40) * np.cos(x @ omega + phase) for x in (x0, x1))
    W0 = 1e-4 * rng.standard_normal((3, 40))
    features = np.concatenate([f0, f1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_kernel = LinearSSLTheory.from_kernel(features @ features.T)
    lr = 0.02 / by_kernel.gammas[0]
    predicted = by_kernel.step_times(lr, F0=features @ W0.T)  # only the outputs, no weights
    steps, eigenvalues, losses, _ = gradient_descent(f0, f1, W0, lr, int(predicted.max() * 1.6))
    np.testing.assert_allclose(half_crossings(steps, eigenvalues), np.sort(predicted), rtol=0.03)
    trajectories = np.sort(by_kernel.eigenvalue_trajectories(steps, lr, F0=features @ W0.T), axis=1)[:, ::-1]
    np.testing.assert_allclose(trajectories, eigenvalues, atol=0.05)
    np.testing.assert_allclose(eigenvalues[-1], 1.0, atol=0.02)
    assert_staircase(steps, losses, predicted, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_features = LinearSSLTheory.from_views(f0, f1)
    with pytest.raises(ValueError, match="F0 needs a kernel theory"):
        by_features.step_times(lr, F0=features @ W0.T)
    with pytest.raises(ValueError, match="F0 must be 2n × d"):
        by_kernel.step_times(lr, F0=np.zeros((7, 3)))


def test_empirical_ntk_predicts_a_wide_network_trained_in_all_its_layers():
    # A 512-wide tanh network with a small output layer stays near its initial tangent kernel (lazy
    # regime): the kernel theory, fed the NTK and the initial outputs, predicts when it learns each mode.
    torch.manual_seed(0)
    x0, x1 = (torch.tensor(v) for v in views(n=60, m=5, noise=0.2, seed=10, scales=[2.0, 1.2, 0.8, 0.5, 0.3]))
    net = torch.nn.Sequential(torch.nn.Linear(5, 512, bias=False), torch.nn.Tanh(),
                              torch.nn.Linear(512, 2, bias=False)).double()
    with torch.no_grad():
        net[0].weight.normal_(0, 5**-0.5)
        net[2].weight.normal_(0, 1e-4 / 512**0.5)
    stacked = torch.cat([x0, x1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theory = LinearSSLTheory.from_kernel(empirical_ntk(net, stacked))
    lr = 0.02 / theory.gammas[0]
    with torch.no_grad():
        predicted = theory.step_times(lr, F0=net(stacked))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    eigenvalues = []
    for _ in range(int(predicted.max() * 1.2)):
        z0, z1 = net(x0), net(x1)
        c = (z0.T @ z1 + z1.T @ z0) / (2 * len(x0))
        eigenvalues.append(torch.linalg.eigvalsh(c.detach()).flip(0).numpy())
        optimizer.zero_grad()
        ((c - torch.eye(c.shape[0], dtype=c.dtype)) ** 2).sum().backward()
        optimizer.step()
    eigenvalues = np.array(eigenvalues)
    observed = half_crossings(np.arange(len(eigenvalues)), eigenvalues)
    np.testing.assert_allclose(observed, np.sort(predicted), rtol=0.03)
