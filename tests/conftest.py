"""Tests run in float64 with fixed seeds; data sets are written into temporary folders.

``--device cuda`` runs the flow harness (``tests/test_flows.py``) on a GPU, ``--dtype float32``
in single precision (tolerances are float64's: expect failures that say how far off float32 is).
"""

import os
import random

import pytest
import torch

# One thread per test process: the suite is thousands of tiny tensor ops, and on a busy 2-core
# machine several threads spin-waiting on each other turned seconds into minutes. Subprocesses
# that tests start inherit this through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="device for the flow harness, e.g. cuda")
    parser.addoption("--dtype", default="float64", choices=["float64", "float32"], help="default dtype")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("--device cuda asked for, but CUDA is not available")
    return torch.device(name)


@pytest.fixture(autouse=True)
def _default_dtype_and_seeded(request: pytest.FixtureRequest):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, request.config.getoption("--dtype")))
    torch.manual_seed(0)
    random.seed(0)
    yield
    torch.set_default_dtype(previous)
    torch.set_grad_enabled(True)
