"""The CPU dropout (relative_performer.models.dropout) against nn.Dropout's contract."""

import pytest
import torch
from torch import nn

from relative_performer.models.dropout import LEVELS, Dropout, dropout_mask, keep_threshold


def test_mask_values_rate_and_mean():
    torch.manual_seed(0)
    p = 0.1
    mask = dropout_mask((1000, 1000), p)
    dropped = keep_threshold(p) / LEVELS
    assert dropped == pytest.approx(p, abs=2**-16)
    values = torch.unique(mask)
    assert values.tolist() == pytest.approx([0.0, 1 / (1 - dropped)])
    rate = (mask == 0).double().mean().item()
    sigma = (dropped * (1 - dropped) / mask.numel()) ** 0.5
    assert abs(rate - dropped) < 5 * sigma
    assert abs(mask.double().mean().item() - 1.0) < 5 * sigma / (1 - dropped)  # unbiased: E[mask] = 1


def test_every_lane_of_a_random_word_drops_at_the_same_rate():
    """Four elements share one 64-bit draw; each lane (and its top bits) must be uniform and independent."""
    torch.manual_seed(1)
    p = 0.5  # the threshold is the top bit of the 15 used: a lane with a constant bit would drop all or none
    keep = (dropout_mask((400_000,), p) > 0).view(-1, 4).double()
    sigma = (0.25 / keep.shape[0]) ** 0.5
    for lane in range(4):
        assert abs(keep[:, lane].mean().item() - 0.5) < 5 * sigma
    centred = keep - keep.mean(0)
    correlation = (centred.T @ centred) / keep.shape[0] / 0.25
    off_diagonal = correlation - torch.diag(torch.diagonal(correlation))
    assert off_diagonal.abs().max().item() < 5 * sigma * 2


def test_mask_follows_the_seed_and_changes_between_calls():
    torch.manual_seed(3)
    first, second = dropout_mask((7, 13), 0.3), dropout_mask((7, 13), 0.3)
    torch.manual_seed(3)
    assert torch.equal(dropout_mask((7, 13), 0.3), first)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dropout_output_and_gradient_are_the_input_times_one_mask(dtype):
    torch.manual_seed(4)
    layer = Dropout(0.25)
    x = torch.randn(3, 5, 7, dtype=dtype, requires_grad=True)  # 105 elements: not a multiple of 4
    out = layer(x)
    assert out.dtype == dtype and out.shape == x.shape
    mask = out.detach().float() / x.detach().float()
    kept = mask != 0
    assert 0 < kept.sum() < x.numel()
    assert torch.allclose(mask[kept], torch.full_like(mask[kept], LEVELS / (LEVELS - keep_threshold(0.25))), rtol=1e-2)
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad * x.detach(), out.detach())  # d out / d x is the same mask


def test_dropout_is_nn_dropout_outside_training_and_at_the_extremes():
    x = torch.randn(4, 9)
    layer = Dropout(0.3)
    assert layer.state_dict() == nn.Dropout(0.3).state_dict() == {}
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)
