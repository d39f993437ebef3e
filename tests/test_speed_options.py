"""The speed and memory options change how a step is computed, not what it computes."""

import pytest
import torch
from archs import ARCHS, tiny_model
from flow_harness import randomize

import nfgen
from nfgen.config.schema import config_from_dict
from nfgen.flows.base import Flow
from nfgen.training.memory import saved_activation_bytes
from nfgen.training.step import autocast


def _model(arch: str = "glow", size: int = 8, steps: int = 2, hidden: int = 8,
           dequantization: str = "uniform", **train) -> nfgen.ImageFlow:
    """A small two-level model; ``train`` holds the speed and memory options under test."""
    return nfgen.build_model(config_from_dict({
        "model": tiny_model(arch, (3, size, size), depth=steps, width=hidden),
        "dequantization": {"kind": dequantization, "steps": 2, "hidden": 4},
        "train": train}))


def _pair(arch: str, dequantization: str):
    plain = randomize(_model(arch, dequantization=dequantization, memory_saving=False), 0.05)
    saving = _model(arch, dequantization=dequantization, memory_saving=True)
    saving.load_state_dict(plain.state_dict())
    return plain, saving


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
@pytest.mark.parametrize("arch", ARCHS)
def test_memory_saving_gives_identical_gradients(arch, dequantization):
    # Uniform noise: the body's input needs no gradient, so the chain's parameters are its only
    # differentiable inputs. The reconstruction is exact up to round-off.
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
        scale = grads[0][name].abs().max().item()
        assert (grads[0][name] - grads[1][name]).abs().max().item() <= 1e-9 * max(scale, 1.0), name
    assert all(lv.flow.memory_saving for lv in saving.body.levels)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_keeps_bits_per_dim_within_noise(arch):
    torch.set_default_dtype(torch.float32)  # autocast casts float32, as in real training
    model = randomize(nfgen.build_model({"model": tiny_model(arch, (3, 8, 8), width=16)}), 0.05)
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    noise = model.draw_noise(32)
    full = model(x, noise)
    with autocast(torch.device("cpu"), amp=True):
        mixed = model(x, noise)
    assert mixed.dtype == torch.float32  # the loss stays float32
    # bf16 keeps ~3 significant digits (8 mantissa bits) of the conditioners' outputs: the bits/dim
    # of this random model (10-20) agree to a few parts in 1,000 on average, 1% at worst
    relative = (full - mixed).abs() / full.abs()
    assert relative.mean().item() < 3e-3 and relative.max().item() < 1e-2
    assert relative.max().item() > 1e-6  # autocast really ran: float32 alone would agree to ~1e-7
    with autocast(torch.device("cpu"), amp=True):
        zs = model.encode(x)
    assert all(z.dtype == torch.float32 for z in zs)  # the flow's own maps ran in float32


@pytest.mark.parametrize("arch", ARCHS)
def test_memory_saving_keeps_activation_memory_flat_in_depth(arch):
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)

    def saved(steps: int, saving: bool) -> int:
        model = _model(arch, steps=steps, memory_saving=saving)
        model.train()
        return saved_activation_bytes(lambda: model(x).mean(), model)

    # Only each level's output and the latents are kept; a flow with an expensive inverse
    # (TarFlow's blocks: cheap_inverse False) is checkpointed, keeping its input and no more.
    checkpointed = sum(not f.cheap_inverse for f in _model(arch, steps=6).modules() if isinstance(f, Flow))
    checkpointed -= sum(not f.cheap_inverse for f in _model(arch, steps=1).modules() if isinstance(f, Flow))
    assert saved(6, True) == saved(1, True) + checkpointed * x.numel() * torch.get_default_dtype().itemsize
    assert saved(1, True) < saved(1, False) / 5
    assert saved(6, False) > 3 * saved(1, False)  # the stored-activation pass grows with depth


def test_channels_last_changes_layout_not_numbers():
    plain = randomize(_model(channels_last=False), 0.05)
    fast = _model(channels_last=True)
    fast.load_state_dict(plain.state_dict())
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    noise = plain.draw_noise(4)
    assert torch.allclose(plain(x, noise), fast(x, noise), rtol=0, atol=1e-12)
    zs = fast.encode(x)
    assert all(z.stride(1) == 1 for z in zs)  # channels innermost: the body ran channels-last
    assert torch.equal(fast.decode(zs), x)
    generators = [torch.Generator().manual_seed(3) for _ in range(2)]
    assert torch.allclose(plain.sample_continuous(4, 0.7, generators[0]),
                          fast.sample_continuous(4, 0.7, generators[1]), rtol=0, atol=1e-10)


def test_memory_saving_recomputes_under_the_forward_autocast():
    # Backward rebuilds the nets in bf16 as the forward ran them; rebuilt in float32 instead,
    # the gradients would differ from the stored-activation ones by ~5e-3 (relative). Backward
    # runs inside the autocast region here, where torch 2.4 would hand the rebuild the forward's
    # cached, graph-less bf16 weights (and drop their gradients) if the cache were used.
    torch.set_default_dtype(torch.float32)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    grads = []
    for saving in (False, True):
        torch.manual_seed(0)
        model = _model(size=16, steps=4, hidden=32, memory_saving=saving)
        model.train()
        with autocast(torch.device("cpu"), amp=True):
            model(x, torch.zeros(8, 3, 16, 16)).float().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert ((grads[0] - grads[1]).norm() / grads[0].norm()).item() < 1.5e-3
