"""Tests run in float64 with fixed seeds; data sets are written into temporary folders."""

import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _float64_and_seeded():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    random.seed(0)
    yield
    torch.set_default_dtype(previous)
    torch.set_grad_enabled(True)
