"""TarFlow against apple/ml-tarflow's recipe: the shifts and log-scales come out of a float32
projection under autocast; random horizontal flips that keep exact resume; the mean class
embedding as the null class; STARFlow's deep-shallow layout."""

from __future__ import annotations

import pytest
import torch
from archs import tiny_model
from datasets import digits, write_image_folder
from run_checks import assert_same_weights

from nfgen.config.schema import ConfigError, config_from_dict
from nfgen.datasets.splits import load_split
from nfgen.flows.conditioning import ClassEmbedding
from nfgen.flows.tarflow import AutoregressiveBlock
from nfgen.model.image_flow import build_model
from nfgen.training.augment import flip_draws, hflip
from nfgen.training.logging import NullLogger
from nfgen.training.run import train
from nfgen.training.trainer import Trainer


def test_shifts_and_log_scales_are_float32_under_autocast():
    torch.manual_seed(0)
    block = AutoregressiveBlock(4, (3, 3), width=16, layers=2, heads=2).float()
    torch.nn.init.normal_(block.net.proj_out.weight, std=0.1)  # not the zero start: real outputs
    seen: dict[str, torch.dtype] = {}
    block.net.proj_out.register_forward_hook(lambda m, i, o: seen.update(proj_in=i[0].dtype, proj_out=o.dtype))
    block.net.layers[0].qkv.register_forward_hook(lambda m, i, o: seen.update(qkv=o.dtype))
    x = torch.randn(2, 4, 3, 3, dtype=torch.float32)
    z32, ld32 = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = block(x)
        assert seen == {"qkv": torch.bfloat16, "proj_in": torch.float32, "proj_out": torch.float32}
        seen.clear()
        back, _ = block.inverse(z)  # the key/value-cached steps too
        assert seen["qkv"] == torch.bfloat16 and seen["proj_out"] == torch.float32
    assert z.dtype == logdet.dtype == torch.float32
    # The Transformer's body ran in bf16, so the numbers move a little, but not by bf16's
    # rounding of every log-scale: the log-dets agree far better than 8 bits of mantissa.
    assert (logdet - ld32).abs().max() < 0.05 * ld32.abs().max() + 1e-3
    assert (back - x).abs().max() < 0.1


def test_flip_draws_are_fixed_by_seed_epoch_and_batch():
    a = flip_draws(7, 2, 5, 4000)
    assert torch.equal(a, flip_draws(7, 2, 5, 4000))
    assert not torch.equal(a, flip_draws(7, 2, 6, 4000)) and not torch.equal(a, flip_draws(7, 3, 5, 4000))
    assert 0.45 < a.double().mean() < 0.55
    x = torch.arange(2 * 1 * 2 * 3).view(2, 1, 2, 3)
    out = hflip(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def _config(root, run_dir, steps: int, hflip: bool = True, **model):
    return config_from_dict({
        "name": "flip", "run_dir": str(run_dir),
        "data": {"dataset": "folder", "root": str(root), "num_workers": 0, "hflip": hflip},
        "model": {**tiny_model("glow", (1, 8, 8)), "n_bits": 5, **model},
        "train": {"device": "cpu", "batch_size": 16, "max_steps": steps, "warmup_steps": 3, "log_every": 1,
                  "eval_every": 100, "sample_every": 100, "checkpoint_every": 100, "eval_batches": 1, "seed": 7,
                  "ema_decay": 0.9}})


@pytest.fixture
def data(tmp_path):
    write_image_folder(tmp_path / "data", list(digits(8)[:50]), split_dirs=True, n_test=10)
    return tmp_path / "data"


def test_training_batches_are_flipped_at_random_and_test_images_never(data, tmp_path):
    cfg = _config(data, tmp_path / "run", 4)
    train_set, test_set = load_split(cfg, "train"), load_split(cfg, "test")
    trainer = Trainer(cfg, tmp_path / "run", NullLogger(), model=build_model(cfg), train_set=train_set,
                      test_set=test_set, progress_bar=False)
    plain = Trainer(_config(data, tmp_path / "run2", 4, hflip=False), tmp_path / "run2", NullLogger(),
                    model=build_model(cfg), train_set=train_set, test_set=test_set, progress_bar=False)
    flipped = mirrored = 0
    for got, want in zip(list(zip(range(4), trainer.stream.batches())), list(zip(range(4), plain.stream.batches()))):
        for a, b in zip(got[1].batch.images, want[1].batch.images):
            same, mirror = torch.equal(a, b), torch.equal(a, b.flip(-1))
            assert same or mirror  # the same image, maybe mirrored: the batch order is untouched
            flipped += mirror and not same
            mirrored += 1
    assert 0.25 * mirrored < flipped < 0.75 * mirrored
    assert torch.equal(next(iter(trainer.evaluation.test_batches())), next(iter(plain.evaluation.test_batches())))


def test_resume_with_flips_equals_an_uninterrupted_run(data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(_config(data, full, 7), full, progress=False)  # 40 images, batch 16: the stop falls mid-epoch
    train(_config(data, part, 3), part, progress=False)
    train(_config(data, part, 7), part, resume=True, progress=False)
    assert_same_weights(torch.load(full / "checkpoints/last.pt", weights_only=True),
                        torch.load(part / "checkpoints/last.pt", weights_only=True))


def test_the_mean_null_class_is_the_mean_class_embedding():
    emb = ClassEmbedding(3, 4, null="mean")
    torch.nn.init.normal_(emb.table.weight)
    out = emb(torch.tensor([0, 3, 2]))
    assert torch.allclose(out[1], emb.table.weight[:3].mean(0), atol=1e-12)
    assert torch.equal(out[0], emb.table.weight[0]) and torch.equal(out[2], emb.table.weight[2])
    out[1].sum().backward()  # training the null class moves every class row, never the spare one
    g = emb.table.weight.grad
    assert torch.allclose(g[:3], torch.full((3, 4), 1 / 3)) and torch.equal(g[3], torch.zeros(4))
    learned = ClassEmbedding(3, 4)
    assert torch.equal(learned(torch.tensor([3]))[0], learned.table.weight[3])


def test_guidance_with_the_mean_null_class():
    cfg = config_from_dict({"model": {**tiny_model("tarflow", (1, 4, 4), depth=2, width=8), "num_classes": 3,
                                      "label_dropout": 0.1, "null_class": "mean"}})
    model = build_model(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    labels = torch.tensor([0, 1, 2, 1])

    def draw(w: float) -> torch.Tensor:
        return model.sample_continuous(4, 0.8, torch.Generator().manual_seed(1), labels=labels, guidance=w)

    assert torch.equal(draw(0.0), model.sample_continuous(4, 0.8, torch.Generator().manual_seed(1), labels=labels))
    assert not torch.allclose(draw(2.0), draw(0.0))
    null = model.classes(torch.full((1,), 3))
    assert torch.allclose(null[0], model.classes.table.weight[:3].mean(0))
    ckpt_cfg = config_from_dict(cfg.to_dict())
    assert ckpt_cfg.model.null_class == "mean"  # stored with the run, rebuilt the same


def test_null_class_options_are_checked():
    with pytest.raises(ConfigError, match="null_class needs a class-conditional"):
        config_from_dict({"model": {"null_class": "mean"}})
    with pytest.raises(ConfigError, match="null_class"):
        config_from_dict({"model": {"num_classes": 2, "null_class": "zero"}})
