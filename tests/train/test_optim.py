import math

import pytest
import torch
from torch import nn

from lengthwise.config import ScheduleConfig
from lengthwise.train.optim import lr_at, penalty


def test_warmup_then_cosine_by_tokens():
    cfg = ScheduleConfig(warmup_tokens=100, decay="cosine", min_lr_ratio=0.1)
    assert lr_at(0, 1100, 1.0, cfg) == pytest.approx(1 / 100)
    assert lr_at(49, 1100, 1.0, cfg) == pytest.approx(0.5)
    assert lr_at(100, 1100, 1.0, cfg) == pytest.approx(1.0)
    # Halfway through the decay: floor + (peak - floor) * (1 + cos(pi/2)) / 2 = 0.55
    assert lr_at(600, 1100, 1.0, cfg) == pytest.approx(0.55)
    assert lr_at(1100, 1100, 1.0, cfg) == pytest.approx(0.1)
    assert lr_at(5000, 1100, 1.0, cfg) == pytest.approx(0.1)


def test_linear_and_constant():
    lin = ScheduleConfig(warmup_tokens=0, decay="linear", min_lr_ratio=0.0)
    assert [lr_at(t, 100, 2.0, lin) for t in (0, 25, 100)] == pytest.approx([2.0, 1.5, 0.0])
    const = ScheduleConfig(warmup_tokens=10, decay="constant")
    assert lr_at(5, 100, 2.0, const) == pytest.approx(1.2)
    assert lr_at(90, 100, 2.0, const) == 2.0


def test_penalty_is_hand_computed_on_decayed_weights_only():
    w = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
    b = nn.Parameter(torch.tensor([3.0]))
    groups = [{"name": "decay", "params": [w]}, {"name": "no_decay", "params": [b]}]
    assert penalty(groups, 0.0, 0.0) is None
    l1 = 0.01 * (1 + 2 + 0.5)
    l2 = 0.001 * (1 + 4 + 0.25)
    assert penalty(groups, 0.01, 0.0).item() == pytest.approx(l1)
    assert penalty(groups, 0.0, 0.001).item() == pytest.approx(l2)
    total = penalty(groups, 0.01, 0.001)
    assert total.item() == pytest.approx(l1 + l2)
    total.backward()
    # d/dw: l1 * sign(w) + 2 * l2 * w
    expected = 0.01 * torch.sign(w.detach()) + 0.002 * w.detach()
    assert torch.allclose(w.grad, expected)
    assert b.grad is None
    assert math.isfinite(total.item())
