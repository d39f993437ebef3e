"""Every shipped config builds at its own size, decodes what it encodes exactly, and trains."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import nfgen
from nfgen.config.schema import load_config, shipped_configs
from nfgen.model.image_flow import initialize
from nfgen.training.step import MicroBatch, make_optimizer, train_step

# Flow++ at the paper's size costs ~40 GFLOPs per image forward (attention over 1,024 pixels in
# every block): its training steps here use the same config at a fraction of the width and depth.
NARROWER = {"flowpp_cifar.yaml": ["model.flowpp.hidden=16", "model.flowpp.blocks=1",
                                  "dequantization.hidden=16", "dequantization.blocks=1"],
            # TarFlow's paper-scale models: 460M and 102M parameters, 1,024 and 256 tokens.
            "tarflow_imagenet64.yaml": ["model.tarflow.width=24", "model.tarflow.heads=2", "model.tarflow.layers=1",
                                       "model.tarflow.blocks=2"],
            "tarflow_cifar.yaml": ["model.tarflow.width=24", "model.tarflow.heads=2", "model.tarflow.layers=1",
                                       "model.tarflow.blocks=2"],
            "tarflow_imagenet64_cond.yaml": ["model.tarflow.width=24", "model.tarflow.heads=2",
                                             "model.tarflow.layers=1", "model.tarflow.blocks=2"]}


@pytest.fixture(autouse=True)
def _float32():
    torch.set_default_dtype(torch.float32)  # the configs' own precision; some are large models


def _labels(cfg, n: int) -> torch.Tensor | None:
    """Labels for a class-conditional config's model (None: unconditional)."""
    return torch.randint(0, cfg.model.num_classes, (n,)) if cfg.model.num_classes else None


def _kept_bits(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    return x // 2 ** (8 - n_bits) * 2 ** (8 - n_bits)


# One image through these takes minutes on a CPU (TarFlow's inverse is 1,023 sequential steps of
# a 64-layer Transformer): they are built at their own size without memory (the meta device),
# and round-trip at their NARROWER size, which keeps every token.
TOO_BIG_TO_RUN = ("tarflow_imagenet64.yaml", "tarflow_cifar.yaml", "tarflow_imagenet64_cond.yaml")


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_config_builds_and_round_trips_at_its_own_size(name):
    cfg = load_config(name)
    if name in TOO_BIG_TO_RUN:
        with torch.device("meta"):
            assert sum(p.numel() for p in nfgen.build_model(cfg).parameters()) > 1e8
        cfg = load_config(name, NARROWER[name])
    model = nfgen.build_model(cfg)
    x = _kept_bits(torch.randint(0, 256, (1, *cfg.model.image_shape), dtype=torch.uint8), cfg.model.n_bits)
    y = _labels(cfg, 1)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(x, y), labels=y), x)
        assert math.isfinite(model.bits_per_dim(x, labels=y).item())


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_config_trains(name):
    cfg = load_config(name, NARROWER.get(name, []))
    model = nfgen.build_model(cfg)
    x = torch.randint(0, 256, (2, *cfg.model.image_shape), dtype=torch.uint8)
    y = _labels(cfg, 2)
    initialize(model, x, labels=y)
    before = [p.detach().clone() for p in model.parameters()]
    # The learning rate of the warm-up's first step, as the trainer's schedule gives it.
    first = dataclasses.replace(cfg.train, lr=cfg.train.lr / max(1, cfg.train.warmup_steps))
    optimizer = make_optimizer(model.parameters(), first)
    for _ in range(2):
        result = train_step(model, model, optimizer, [MicroBatch(x, labels=y)], cfg.train, torch.device("cpu"))
        assert result.applied and math.isfinite(result.bpd)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


OLD_REALNVP = {  # the layout nfgen wrote before per-architecture sections: every option, flat
    "arch": "realnvp", "image_shape": [1, 8, 8], "n_bits": 5, "levels": 2, "steps": 1, "hidden": 8, "blocks": 1,
    "coupling": "affine", "permutation": "shuffle", "split_prior": "learned", "learn_top": True,
    "preprocess": "logit", "logit_alpha": 0.05}


@pytest.mark.legacy_keys
def test_old_flat_configs_and_checkpoints_still_load(tmp_path):
    from nfgen.config.schema import ConfigError, config_from_dict
    from nfgen.training.checkpoint import model_from_checkpoint, save_checkpoint

    old = {"model": OLD_REALNVP}
    # In a file, an option the architecture ignored is an error unless it holds the old default...
    with pytest.raises(ConfigError, match="model.permutation does not apply to arch realnvp"):
        config_from_dict(old)
    cfg = config_from_dict({"model": {**OLD_REALNVP, "permutation": "conv1x1_lu"}})
    assert (cfg.model.realnvp.levels, cfg.model.realnvp.blocks) == (2, 1) and cfg.model.glow is None
    # ...while an old checkpoint was built without it, so it is dropped and the model loads.
    model = nfgen.build_model(cfg)
    save_checkpoint(tmp_path / "old.pt", {"config": old, "model": model.state_dict()})
    loaded, loaded_cfg, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert loaded_cfg.model == cfg.model
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    torch.manual_seed(0)
    a = model.eval().log_prob(x)
    torch.manual_seed(0)
    assert torch.equal(loaded.log_prob(x), a)
