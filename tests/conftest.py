"""Tests run in float64 with fixed seeds; data sets are written into temporary folders.

``--device cuda`` runs the flow harness (``tests/test_flows.py``) on a GPU, ``--dtype float32``
in single precision (tolerances are float64's: expect failures that say how far off float32 is).
``--plugin MODULE`` (repeatable; ``tests/plugins/`` is searched) imports a plugin module before
the tests are collected, so every test that reads a registry covers what it registers:
``pytest --plugin nice`` runs every architecture-parametrized test on NICE as well.
"""

import os
import random
from pathlib import Path

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
    parser.addoption("--plugin", action="append", default=[], metavar="MODULE",
                     help="a plugin module imported before collection (tests/plugins/ is searched), e.g. nice")


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


def pytest_configure(config: pytest.Config) -> None:
    from nfgen.config.plugins import load_plugins

    named = config.getoption("--plugin")
    if named:  # and for the subprocesses tests start (torchrun, the console script)
        folder = str(Path(__file__).parent / "plugins")
        os.environ["PYTHONPATH"] = os.pathsep.join([folder, *filter(None, [os.environ.get("PYTHONPATH")])])
    load_plugins(named, [Path(__file__).parent / "plugins"], "--plugin")
    config.addinivalue_line("markers", "legacy_keys: the test is about the old flat model keys (model.steps, "
                                       "not model.glow.steps) and their migration; other tests must not use them")


_MIGRATED: list = []  # the model sections migrated from flat keys since the last check


@pytest.fixture(scope="session", autouse=True)
def _watch_legacy_model_keys():
    import nfgen.config.schema

    migrate = nfgen.config.schema._migrate_model  # renamed or moved? follow it here

    def watched(data, *args, **kwargs):
        out = migrate(data, *args, **kwargs)
        if out is not data:
            _MIGRATED.append(data.get("model"))
        return out

    nfgen.config.schema._migrate_model = watched
    yield
    nfgen.config.schema._migrate_model = migrate


@pytest.fixture(autouse=True)
def _no_legacy_model_keys(request: pytest.FixtureRequest, _watch_legacy_model_keys):
    """A config in the old flat model keys is migrated, so a test written in them exercises the
    migration, not today's schema: outside the tests marked ``legacy_keys``, a config built with
    them in this process (by the test or the fixtures set up for it; a subprocess's are not seen)
    fails the test."""
    yield
    migrated, _MIGRATED[:] = list(_MIGRATED), []
    if migrated and request.node.get_closest_marker("legacy_keys") is None:
        pytest.fail(f"this test or its fixtures built a config in the old flat model keys ({migrated[0]}): "
                    "write them in the architecture's section (model.glow.steps), or mark the test "
                    "legacy_keys if the migration is what it tests", pytrace=False)
