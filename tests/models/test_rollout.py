"""Attention rollout against a float64 full-matrix reference."""

import pytest
import torch

from ramstrans.models import attention_rollout


def _random_attention(B, N, L, peak=3.0):
    return [torch.softmax(peak * torch.randn(B, N, N), dim=-1) for _ in range(L)]


def _reference(attns, residual, rows, prefix=1):
    """R = Â_L ... Â_1 as the full N x N chain in float64, then one row (or the mean of the rows)."""
    B, N, _ = attns[0].shape
    eye = torch.eye(N, dtype=torch.float64)
    R = eye.expand(B, N, N)
    for a in attns:
        a = a.double() + residual * eye
        a = a / a.sum(-1, keepdim=True)
        R = a @ R
    row = R[:, 0] if rows == "cls" else R.mean(1)
    return row[:, prefix:]


@pytest.mark.parametrize("rows", ["cls", "mean"])
@pytest.mark.parametrize("residual", [1.0, 0.5, 0.0])
def test_rollout_matches_full_chain_in_float64(rows, residual):
    gh, gw = 3, 5  # non-square grid
    attns = _random_attention(2, 1 + gh * gw, 4)
    got = attention_rollout(attns, (gh, gw), residual=residual, rows=rows)
    assert got.shape == (2, gh, gw)
    want = _reference(attns, residual, rows).reshape(2, gh, gw)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)


def test_rollout_of_rows_that_do_not_sum_to_one_is_still_row_normalised():
    attns = [torch.rand(1, 10, 10) for _ in range(3)]  # unnormalised on purpose
    got = attention_rollout(attns, (3, 3), residual=1.0, rows="mean")
    torch.testing.assert_close(got.double().flatten(1), _reference(attns, 1.0, "mean"), atol=1e-6, rtol=1e-5)


def test_rollout_rejects_bad_arguments():
    attns = _random_attention(1, 10, 2)
    with pytest.raises(ValueError, match="grid 4x4"):
        attention_rollout(attns, (4, 4))
    with pytest.raises(ValueError, match="rows"):
        attention_rollout(attns, (3, 3), rows="max")
    with pytest.raises(ValueError, match="at least one"):
        attention_rollout([], (3, 3))
