"""Training on real images: the bound drops, and a resumed run equals an uninterrupted one."""

import math

import pytest
import torch
from archs import ARCHS, dequantizer, tiny_model
from datasets import digits, write_image_folder
from run_checks import assert_same_weights
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import nfgen
from nfgen.config.schema import config_from_dict
from nfgen.tasks.generate import interpolate
from nfgen.training.run import train


def _digits_tensor() -> torch.Tensor:
    return torch.from_numpy(digits(8)).unsqueeze(1)  # uint8 [1797, 1, 8, 8], real handwriting


@pytest.mark.parametrize("arch", ARCHS)
def test_short_optimisation_lowers_test_bits_per_dim(arch):
    torch.set_default_dtype(torch.float32)  # speed: this is a training run, not a precision check
    images = _digits_tensor()
    train_x, test_x = images[:1500], images[1500:]
    model = nfgen.build_model({"model": {**tiny_model(arch, (1, 8, 8), depth=3, width=32), "n_bits": 5}})
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    model.train()
    model.bits_per_dim(train_x[:256])  # actnorm's data-dependent initialisation

    def test_bpd() -> float:
        model.eval()
        with torch.no_grad():
            return model.bits_per_dim(test_x).mean().item()

    before = test_bpd()
    for _ in range(200):
        x = train_x[torch.randint(0, len(train_x), (64,))]
        model.train()
        loss = model.bits_per_dim(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = test_bpd()
    print(f"{arch}: test bits/dim {before:.3f} -> {after:.3f}")
    assert math.isfinite(after) and after < 0.75 * before


def _run_config(root, run_dir, max_steps, arch="glow", **train):
    return config_from_dict({
        "name": "resume", "run_dir": str(run_dir),
        "data": {"dataset": "folder", "root": str(root), "num_workers": 0},
        "model": {**tiny_model(arch, (1, 8, 8)), "n_bits": 5},
        "dequantization": dequantizer(arch, hidden=4),  # of the architecture's own kind
        "train": {"device": "cpu", "batch_size": 16, "max_steps": max_steps, "warmup_steps": 3,
                  "log_every": 1, "eval_every": 4, "sample_every": 100, "checkpoint_every": 100,
                  "ema_decay": 0.9, "eval_batches": 1, "seed": 7, **train},
    })


def _scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.mark.parametrize("arch", ARCHS)
def test_resumed_run_equals_uninterrupted_run(tmp_path, arch):
    # 40 train images and batch 16: an epoch is 2 steps, so the stop falls mid-epoch and the
    # resumed run must also restore the data order, the noise RNG, the EMA and the schedule.
    write_image_folder(tmp_path / "data", list(digits(8)[:50]), split_dirs=True, n_test=10)
    full, part = tmp_path / "full", tmp_path / "part"
    train(_run_config(tmp_path / "data", full, 7, arch), full, progress=False)
    train(_run_config(tmp_path / "data", part, 3, arch), part, progress=False)
    train(_run_config(tmp_path / "data", part, 7, arch), part, resume=True, progress=False)

    a = torch.load(full / "checkpoints/last.pt", weights_only=True)
    b = torch.load(part / "checkpoints/last.pt", weights_only=True)
    assert_same_weights(a, b)
    drop = {"train_seconds"}  # wall-clock time, the one field allowed to differ
    assert {k: v for k, v in a["progress"].items() if k not in drop} == {
        k: v for k, v in b["progress"].items() if k not in drop}
    losses_a, losses_b = _scalars(full, "train/bpd"), _scalars(part, "train/bpd")
    assert sorted(losses_a) == list(range(1, 8))
    assert all(losses_a[s] == losses_b[s] for s in range(1, 8))  # bitwise, as floats
    assert _scalars(full, "test/bpd")[4] == _scalars(part, "test/bpd")[4]


def test_interpolation_rows_start_and_end_at_the_real_images():
    images = _digits_tensor()[:6]
    model = nfgen.build_model({"model": {"image_shape": [1, 8, 8], "n_bits": 5,
                                         "glow": {"levels": 2, "steps": 1, "hidden": 8}}})
    x = images // 8 * 8  # 5-bit images, which decode(encode(x)) reproduces exactly
    for spherical in (False, True):
        rows = interpolate(model, x[:3], x[3:], steps=4, spherical=spherical)
        assert rows.shape == (3, 6, 1, 8, 8)
        assert torch.equal(rows[:, 0], x[:3]) and torch.equal(rows[:, 1], x[:3])
        assert torch.equal(rows[:, -1], x[3:]) and torch.equal(rows[:, -2], x[3:])
