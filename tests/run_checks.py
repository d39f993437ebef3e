"""What tests of whole training runs compare: two checkpoints' weights, bit for bit."""

from __future__ import annotations


def assert_same_weights(a: dict, b: dict) -> None:
    """The model's and the EMA's tensors of two loaded checkpoints are equal, bit for bit."""
    import torch

    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
