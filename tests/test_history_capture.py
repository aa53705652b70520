import numpy as np
import pytest
import torch
from lightly.loss import BarlowTwinsLoss, NTXentLoss, WMSELoss
from torch import nn

from lightning_stepwise.capture import (
    NoEmbeddingFoundError,
    TrackingPoint,
    find_tracking_points,
    to_embedding_rows,
)
from lightning_stepwise.embedding_tap import EmbeddingTap
from lightning_stepwise.history import SpectrumHistory


def test_history_thins_evenly_and_stays_bounded():
    h = SpectrumHistory(max_rows=16)
    for i in range(1_000):
        h.append(measurement=i, step=10 * i, eigenvalues=np.full(3, float(i)))
        assert len(h) < 16
    steps = h.as_arrays()["step"]
    assert len(steps) >= 8
    gaps = np.diff(steps)
    assert (gaps == gaps[0]).all() and steps[0] == 0  # an even grid from the start of the run
    assert steps[-1] >= 10 * (1_000 - gaps[0])  # and reaching to the end


def test_history_state_round_trip():
    h = SpectrumHistory(max_rows=8)
    for i in range(20):
        h.append(measurement=i, step=i, loss=float(i) / 2, eigenvalues=np.arange(4.0) + i)
    restored = SpectrumHistory(max_rows=8)
    restored.load_state_dict(h.state_dict())
    for key, value in h.as_arrays().items():
        np.testing.assert_array_equal(restored.as_arrays()[key], value)
    assert restored.stride == h.stride


def test_history_rejects_out_of_order_measurements():
    h = SpectrumHistory()
    h.append(measurement=3, eigenvalues=np.ones(2))
    with pytest.raises(ValueError, match="not after"):
        h.append(measurement=3, eigenvalues=np.ones(2))


class LightlyShaped(nn.Module):
    def __init__(self, with_loss=True, with_head=True):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1))
        if with_head:
            self.projection_head = nn.Linear(4, 8)
        if with_loss:
            self.criterion = BarlowTwinsLoss()


def test_auto_detection_order():
    assert [p.source for p in find_tracking_points(LightlyShaped())] == ["loss_inputs"]
    assert [p.name for p in find_tracking_points(LightlyShaped(with_loss=False))] == ["projection_head"]
    assert [p.name for p in find_tracking_points(LightlyShaped(with_loss=False, with_head=False))] == ["backbone"]


def test_loss_nested_inside_a_loss_is_not_picked():
    net = nn.Module()
    net.criterion = WMSELoss()
    assert [p.name for p in find_tracking_points(net)] == ["criterion"]


def test_normalize_default_follows_the_loss():
    net = nn.Module()
    net.criterion = NTXentLoss()
    assert find_tracking_points(net)[0].loss_normalizes
    assert not find_tracking_points(LightlyShaped())[0].loss_normalizes


def test_no_embedding_error_lists_candidates_and_both_ways_to_point():
    net = nn.Module()
    net.encoder = nn.Linear(3, 3)
    net.student_head = nn.Linear(3, 2)
    with pytest.raises(NoEmbeddingFoundError) as err:
        find_tracking_points(net)
    message = str(err.value)
    assert "encoder: Linear" in message and "student_head: Linear" in message
    assert "module=" in message and "embedding_fn=" in message


def test_unknown_dotted_path_names_what_exists():
    with pytest.raises(NoEmbeddingFoundError, match="(?s)no submodule `student_head`.*projection_head: Linear"):
        find_tracking_points(LightlyShaped(), module="student_head")


def test_rows_from_both_call_patterns_and_odd_shapes():
    rows, problems = to_embedding_rows([torch.ones(4, 8), torch.ones(4, 8)])
    assert rows.shape == (8, 8) and not problems
    rows, problems = to_embedding_rows([torch.ones(8, 8)])
    assert rows.shape == (8, 8)
    rows, problems = to_embedding_rows([torch.ones(4, 512, 1, 1)])  # Lightly's resnet backbone: silent
    assert rows.shape == (4, 512) and not problems
    rows, problems = to_embedding_rows([torch.ones(4, 5, 6)])  # e.g. tokens: (batch, tokens, dim)
    assert rows.shape == (4, 30) and [k for k, _ in problems] == ["flattened"]
    rows, problems = to_embedding_rows([torch.ones(4, 8), torch.ones(4, 3)])
    assert rows.shape == (4, 8) and [k for k, _ in problems] == ["width_mismatch"]
    rows, problems = to_embedding_rows([torch.ones(4, dtype=torch.long), torch.ones(3)])
    assert rows is None and [k for k, _ in problems] == ["no_rows"]


def test_tap_copies_are_detached_and_immune_to_in_place_changes():
    head = nn.Linear(3, 2)
    tap = EmbeddingTap(TrackingPoint("head", "module_output", head)).attach()
    tap.active = True
    out = head(torch.ones(2, 3))
    expected = out.detach().clone()
    with torch.no_grad():
        out.mul_(0)
    (captured,) = tap.take()
    assert not captured.requires_grad and torch.equal(captured, expected)
    tap.remove()
    head(torch.ones(2, 3))
    assert tap.take() == []


def test_history_arrays_kept_up_to_date_equal_a_rebuild():
    from lightning_stepwise.history import SpectrumHistory

    rng = np.random.default_rng(0)
    for _ in range(20):
        max_rows = int(rng.integers(3, 30))
        read_often, read_once = SpectrumHistory(max_rows), SpectrumHistory(max_rows)
        for i in range(int(rng.integers(1, 80))):
            modes = None
            if rng.random() < 0.7:
                k = int(rng.integers(0, 5))
                modes = {"mode_ids": np.arange(k), "mode_eigenvalues": rng.random(k), "mode_overlap": rng.random(k)}
            row = {"measurement": i, "step": 3 * i, "eigenvalues": rng.random(int(rng.integers(1, 6))),
                   "modes": modes, "loss": rng.random()}
            read_often.append(**row)
            read_once.append(**row)
            if rng.random() < 0.3:
                read_often.as_arrays()["step"][:] = -1  # a copy: changing it changes nothing inside
            if rng.random() < 0.05:
                read_often.drop_measurement(i)
                read_once.drop_measurement(i)
        expected = read_once.as_arrays()
        got = read_often.as_arrays()
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value)
