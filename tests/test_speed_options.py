"""The speed and memory options change how a step is computed, not what it computes."""

import pytest
import torch
from flow_harness import randomize

import nfgen
from nfgen.config import config_from_dict
from nfgen.training.step import autocast


def _pair(arch: str, dequantization: str = "variational", **model):
    cfgs = [config_from_dict({"model": {"arch": arch, "image_shape": [3, 8, 8], "levels": 2, "steps": 2,
                                        "hidden": 8, "blocks": 1, **model},
                              "dequantization": {"kind": dequantization, "steps": 2, "hidden": 4},
                              "train": {"memory_saving": saving}}) for saving in (False, True)]
    plain = randomize(nfgen.build_model(cfgs[0]), 0.05)
    saving = nfgen.build_model(cfgs[1])
    saving.load_state_dict(plain.state_dict())
    return plain, saving


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
@pytest.mark.parametrize("arch", ["glow", "realnvp"])
def test_memory_saving_gives_identical_gradients(arch, dequantization):
    # Uniform noise: the body's input needs no gradient, the case where reentrant
    # checkpointing would silently drop the first block's parameter gradients.
    plain, saving = _pair(arch, dequantization)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    noise = plain.draw_noise(4)
    grads = []
    for model in (plain, saving):
        model.train()
        loss = model(x, noise).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-10, atol=1e-12), name
    assert any(lv.flow.checkpoint for lv in saving.body.levels)


def test_bf16_autocast_keeps_bits_per_dim_within_noise():
    torch.set_default_dtype(torch.float32)  # autocast casts float32, as in real training
    model = randomize(nfgen.build_model({"model": {"image_shape": [3, 8, 8], "levels": 2, "steps": 2,
                                                   "hidden": 16}}), 0.05)
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    noise = model.draw_noise(32)
    full = model(x, noise)
    with autocast(torch.device("cpu"), amp=True):
        mixed = model(x, noise)
    assert mixed.dtype == torch.float32  # the loss stays float32
    assert (full - mixed).abs().max().item() < 0.01  # bits/dim; bf16 has ~3 significant digits
    with autocast(torch.device("cpu"), amp=True):
        zs = model.encode(x)
    assert all(z.dtype == torch.float32 for z in zs)  # the flow's own maps ran in float32
