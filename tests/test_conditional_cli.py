"""The verbs on class-conditional models: sample --label/--guidance/--annealed, classify,
conditional eval-bpd, interpolation within a class, check and score; and the generative
classifier on real digits (well above chance with true labels, at chance with shuffled ones)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from archs import ARCHS, tiny_model
from PIL import Image
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.config.schema import config_from_dict
from nfgen.datasets.labels import Labelled
from nfgen.datasets.loading import make_loader
from nfgen.datasets.splits import load_split
from nfgen.model.image_flow import build_model
from nfgen.tasks.classify import classify, format_confusion
from nfgen.tasks.evaluate import class_log_probs, conditional_bpd, evaluate_bpd
from nfgen.tasks.generate import interpolate, same_class_pairs
from nfgen.training.checkpoint import model_from_checkpoint
from nfgen.training.logging import NullLogger
from nfgen.training.trainer import Trainer

runner = CliRunner()
NAMES = ["one", "two", "zero"]  # the class folders, sorted: label 0 is "one"


def nfgen(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, message: str) -> None:
    assert result.exit_code != 0, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.rint(d.images * 255 / 16).astype(np.uint8), d.target


def _train(tmp: Path, name: str, data: Path, model: dict, steps: int = 4) -> Path:
    cfg = {"name": name,
           "data": {"dataset": "folder", "root": str(data), "num_workers": 0, "labels": True},
           "model": {**model, "n_bits": 5},
           "train": {"device": "cpu", "batch_size": 8, "max_steps": steps, "warmup_steps": 2, "log_every": 100,
                     "eval_every": 100, "sample_every": 100, "checkpoint_every": 100, "eval_batches": 1, "seed": 3}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = nfgen("train", "--config", path, "--run-dir", tmp / name, "--no-progress")
    assert result.exit_code == 0, result.output
    return tmp / name / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Real digits 0, 1, 2 in class folders named by word (16 train, 5 test each), and tiny runs
    on them: conditional Glow with label dropout ("glow"), without ("nodrop"), conditional TarFlow
    with label dropout ("tarflow") and an unconditional Glow ("plain")."""
    tmp = tmp_path_factory.mktemp("conditional")
    images, targets = _digits()
    for digit, name in enumerate(["zero", "one", "two"]):
        of_class = images[targets == digit]
        for split, rows in (("train", of_class[:16]), ("test", of_class[16:21])):
            (tmp / "data" / split / name).mkdir(parents=True)
            for i, im in enumerate(rows):
                Image.fromarray(im).save(tmp / "data" / split / name / f"{i:02d}.png")
    glow = tiny_model("glow", (1, 8, 8))
    return {
        "glow": _train(tmp, "glow", tmp / "data", {**glow, "num_classes": 3, "label_dropout": 0.25}),
        "nodrop": _train(tmp, "nodrop", tmp / "data", {**glow, "num_classes": 3}, steps=2),
        "tarflow": _train(tmp, "tarflow", tmp / "data", {**tiny_model("tarflow", (1, 8, 8)), "num_classes": 3,
                                                          "label_dropout": 0.25}, steps=2),
        "plain": _train(tmp, "plain", tmp / "data", glow, steps=2),
    }


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


# sample


def test_default_grid_has_a_row_per_class(runs, tmp_path):
    result = nfgen("sample", "--ckpt", runs["glow"], "--out", tmp_path / "s.png")  # --n 64: 21 per class
    assert result.exit_code == 0, result.output
    assert "63 samples" in result.output and "3 rows of 21 (classes one, two, zero)" in result.output
    assert png(tmp_path / "s.png").shape == (3 * 10 + 2, 21 * 10 + 2)  # 8x8 images, 2 px padding
    result = nfgen("sample", "--ckpt", runs["glow"], "--out", tmp_path / "t.png", "--n", 7)  # 7 // 3 per class
    assert result.exit_code == 0 and "3 rows of 2" in result.output
    assert png(tmp_path / "t.png").shape == (3 * 10 + 2, 2 * 10 + 2)
    # Fewer samples than classes: isqrt(n) classes spread over the labels (ImageNet's 1,000 in 64).
    result = nfgen("sample", "--ckpt", runs["glow"], "--out", tmp_path / "u.png", "--n", 2)
    assert result.exit_code == 0 and "2 samples" in result.output and "1 row of 2 (class one)" in result.output


def test_labels_by_name_or_number_sample_those_classes(runs, tmp_path):
    result = nfgen("sample", "--ckpt", runs["glow"], "--out", tmp_path / "s.png", "--label", "zero", "--label", 0,
                   "--n", 4, "--seed", 5, "--each", tmp_path / "each")
    assert result.exit_code == 0, result.output
    assert "2 rows of 2 (classes zero, one)" in result.output
    assert png(tmp_path / "s.png").shape == (2 * 10 + 2, 2 * 10 + 2)
    model, _, _ = model_from_checkpoint(runs["glow"])
    generator = torch.Generator().manual_seed(5)
    expected = model.sample(4, generator=generator, labels=torch.tensor([2, 2, 0, 0]))
    written = [png(p) for p in sorted((tmp_path / "each").glob("*.png"))]
    assert [np.array_equal(w, e[0].numpy()) for w, e in zip(written, expected)] == [True] * 4
    other = model.sample(4, generator=torch.Generator().manual_seed(5), labels=torch.tensor([1, 1, 1, 1]))
    assert not torch.equal(other, expected)  # the label decides the sample


def test_the_null_class_is_the_unconditional_model_whatever_the_guidance(runs, tmp_path):
    grids = []
    for w in (0, 3):
        result = nfgen("sample", "--ckpt", runs["glow"], "--out", tmp_path / f"n{w}.png", "--label", "null",
                       "--n", 3, "--seed", 2, "--guidance", w)
        assert result.exit_code == 0 and "1 row of 3 (class null)" in result.output, result.output
        grids.append(png(tmp_path / f"n{w}.png"))
    assert np.array_equal(*grids)
    model, _, _ = model_from_checkpoint(runs["glow"])
    plain = model.sample(3, generator=torch.Generator().manual_seed(2), labels=torch.full((3,), 3))
    assert np.array_equal(grids[0][2:10, 2:10], plain[0, 0].numpy())


def test_guidance_zero_is_the_plain_sample_and_guidance_changes_it(runs, tmp_path):
    outs = {}
    for name, extra in (("plain", ()), ("w0", ("--guidance", 0)), ("w2", ("--guidance", 2))):
        result = nfgen("sample", "--ckpt", runs["glow"], "--out", tmp_path / f"{name}.png", "--n", 6, *extra)
        assert result.exit_code == 0, result.output
        outs[name] = png(tmp_path / f"{name}.png")
    assert "guidance 2" in result.output
    assert np.array_equal(outs["plain"], outs["w0"]) and not np.array_equal(outs["plain"], outs["w2"])


def test_annealed_guidance_on_tarflow(runs, tmp_path):
    outs = {}
    for name, extra in (("w", ()), ("annealed", ("--annealed",))):
        result = nfgen("sample", "--ckpt", runs["tarflow"], "--out", tmp_path / f"{name}.png", "--n", 3,
                       "--guidance", 3, *extra)
        assert result.exit_code == 0, result.output
        outs[name] = png(tmp_path / f"{name}.png")
    assert "guidance 3 annealed" in result.output
    assert not np.array_equal(outs["w"], outs["annealed"])


@pytest.mark.parametrize("run, args, message", [
    ("glow", ("--label", "cow"),
     "--label 'cow' is not a class of this model: give a number 0..2, a name (one, two, zero) or null"),
    ("nodrop", ("--label", "null"), "--label null samples the null class (the unconditional model), which a model "
                                    "trained without model.label_dropout never learned"),
    ("glow", ("--label", 3), "--label '3' is not a class of this model"),
    ("glow", ("--guidance", 1, "--annealed"), "--annealed grows the guidance weight over TarFlow's tokens; this model is glow"),
    ("tarflow", ("--annealed",), "--annealed anneals the guidance weight: give --guidance W > 0"),
    ("glow", ("--guidance", -1), "--guidance must be a number in [0, 100], got -1"),
    ("nodrop", ("--guidance", 1), "--guidance needs a model trained with model.label_dropout > 0"),
    ("plain", ("--label", 1), "--label needs a class-conditional model (model.num_classes > 0)"),
    ("plain", ("--guidance", 1), "--guidance needs a class-conditional model"),
])
def test_sample_option_errors_are_one_line_and_write_nothing(runs, tmp_path, run, args, message):
    result = nfgen("sample", "--ckpt", runs[run], "--out", tmp_path / "s.png", *args)
    one_line_error(result, message)
    assert not (tmp_path / "s.png").exists()


# eval-bpd


def test_eval_bpd_reports_conditional_and_marginal(runs, tmp_path):
    out = tmp_path / "r.json"
    result = nfgen("eval-bpd", "--ckpt", runs["glow"], "--json", out, "--samples", 2)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["num_classes"] == 3 and record["n_images"] == 15 and record["importance_samples"] == 2
    assert "true label" in record["conditional"]["means"] and "mean_y p(x | y)" in record["marginal"]["means"]
    assert "bits_per_dim" not in record  # which bits/dim: the two sections say
    printed = [float(v) for v in re.findall(r": ([0-9.]+) ±", result.output)]
    assert printed == pytest.approx([record["conditional"]["bits_per_dim"], record["marginal"]["bits_per_dim"]], abs=5e-5)

    # The conditional figure is bits_per_dim with the true labels, with the same draws.
    model, cfg, _ = model_from_checkpoint(runs["glow"])
    loader = make_loader(load_split(cfg, "test"), cfg.train.batch_size, shuffle=False, num_workers=0, pin_memory=False)
    torch.manual_seed(0)
    plain = evaluate_bpd(model, loader, n_samples=2)
    assert record["conditional"]["bits_per_dim"] == pytest.approx(plain.bpd, rel=1e-9)
    assert record["conditional"]["stderr"] == pytest.approx(plain.stderr, rel=1e-6)

    # Per image, log mean_y p(x | y) lies between the worst and the best class, and
    # p(x) >= p(x | y) / K bounds the marginal by the conditional plus log2(K) / D.
    torch.manual_seed(0)
    log_probs, labels = class_log_probs(model, loader, 2)
    per_class = -log_probs / (model.dims * math.log(2))
    marginal = -(torch.logsumexp(log_probs, 1) - math.log(3)) / (model.dims * math.log(2))
    conditional = per_class.gather(1, labels[:, None])[:, 0]
    assert (per_class.min(1).values <= marginal + 1e-12).all() and (marginal <= per_class.max(1).values + 1e-12).all()
    assert (marginal <= conditional + math.log2(3) / model.dims + 1e-12).all()
    c = conditional_bpd(log_probs, labels, model.dims)
    assert c.marginal.bpd == pytest.approx(record["marginal"]["bits_per_dim"], rel=1e-9)
    assert c.conditional.bpd == pytest.approx(conditional.mean().item(), rel=1e-12)


def test_unconditional_eval_bpd_json_is_unchanged(runs, tmp_path):
    out = tmp_path / "r.json"
    assert nfgen("eval-bpd", "--ckpt", runs["plain"], "--json", out).exit_code == 0
    assert list(json.loads(out.read_text())) == ["bits_per_dim", "stderr", "nats_per_image", "n_bits", "dequantization",
                                                 "importance_samples", "checkpoint", "split", "n_images"]


# classify


def test_classify_prints_accuracy_and_confusion_and_writes_picture_and_posteriors(runs, tmp_path):
    picture, out = tmp_path / "confusion.png", tmp_path / "c.json"
    result = nfgen("classify", "--ckpt", runs["glow"], "--out", picture, "--json", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    accuracy = float(re.search(r"test accuracy: ([0-9.]+) \((\d+) of 15 images\)", result.output).group(1))
    assert record["accuracy"] == pytest.approx(accuracy, abs=5e-5) and record["class_names"] == NAMES
    header = next(line for line in result.output.splitlines() if line.startswith("true \\ predicted"))
    assert header.split()[3:] == [*NAMES, "recall"]
    conf = np.array(record["confusion"])
    assert conf.shape == (3, 3) and conf.sum() == 15 and conf.sum(1).tolist() == [5, 5, 5]
    assert np.trace(conf) / 15 == pytest.approx(record["accuracy"])
    images = record["images"]
    assert len(images) == 15 and all(abs(sum(i["posterior"]) - 1) < 1e-9 for i in images)
    for i in images:  # the file's class folder is its true label; the prediction is the posterior's argmax
        assert NAMES[i["label"]] == Path(i["image"]).parent.name
        assert i["predicted"] == int(np.argmax(i["posterior"]))
    assert np.mean([i["label"] == i["predicted"] for i in images]) == pytest.approx(record["accuracy"])
    with Image.open(picture) as im:
        im.verify()
    again = nfgen("classify", "--ckpt", runs["glow"], "--out", picture)
    one_line_error(again, "exists; pass --overwrite to replace it")


def test_classify_json_to_standard_output(runs, tmp_path):
    result = runner.invoke(app, ["classify", "--ckpt", str(runs["glow"]), "--out", str(tmp_path / "c.png"), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_images"] == 15  # the table went to stderr


def test_classify_refuses_an_unconditional_model(runs, tmp_path):
    result = nfgen("classify", "--ckpt", runs["plain"], "--out", tmp_path / "c.png", "--json", tmp_path / "c.json")
    one_line_error(result, "classify needs a class-conditional model (model.num_classes > 0); this one is unconditional")
    assert list(tmp_path.iterdir()) == []


# interpolate, check, score


def test_interpolation_keeps_the_class(runs, tmp_path):
    out = tmp_path / "i.png"
    result = nfgen("interpolate", "--ckpt", runs["glow"], "--pairs", 3, "--steps", 4, "--out", out)
    assert result.exit_code == 0, result.output
    assert png(out).shape == (3 * 10 + 2, 6 * 10 + 2)

    model, cfg, _ = model_from_checkpoint(runs["glow"])
    data = load_split(cfg, "test")
    a, b = same_class_pairs(data.labels, 20, torch.Generator().manual_seed(0))
    assert torch.equal(data.labels[a], data.labels[b]) and (a != b).all()
    x_a, x_b = (torch.stack([data[int(i)][0] for i in idx]) // 8 * 8 for idx in (a[:3], b[:3]))  # 5-bit images
    labels = data.labels[a[:3]]
    rows = interpolate(model, x_a, x_b, 2, labels=labels)  # t = 0 and 1: the pair's own images, decoded
    assert torch.equal(rows[:, 1], x_a) and torch.equal(rows[:, 2], x_b)
    za = model.encode(x_a, labels)  # the class matters: decoded as another class, the latent is another image
    assert not torch.equal(model.decode(za, labels=(labels + 1) % 3), x_a)
    with pytest.raises(ValueError, match="give labels"):
        interpolate(model, x_a, x_b, 2)


def test_check_examines_a_conditional_model_with_its_classes(runs, tmp_path):
    result = nfgen("check", "--ckpt", runs["glow"], "--n", 4)
    assert result.exit_code == 0, result.output
    assert "classes 0, 1, 2, 0" in result.output and result.output.strip().splitlines()[-1].startswith("healthy")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": "folder", "root": str(tmp_path), "labels": True},
                                      "model": {**tiny_model("realnvp", (1, 8, 8)), "num_classes": 4}}))
    result = nfgen("check", "--config", config, "--n", 2)
    assert result.exit_code == 0, result.output


def test_score_uses_the_marginal_likelihood(runs, tmp_path):
    out = tmp_path / "s.csv"
    result = nfgen("score", "--ckpt", runs["glow"], "--split", "test", "--csv", out)
    assert result.exit_code == 0, result.output
    rows = out.read_text().splitlines()
    assert len(rows) == 16 and Path(rows[1].split(",")[0]).parent.name in NAMES
    bpd = np.array([float(r.split(",")[1]) for r in rows[1:]])
    model, cfg, _ = model_from_checkpoint(runs["glow"])
    torch.manual_seed(0)
    batches = make_loader(load_split(cfg, "test"), cfg.train.batch_size, shuffle=False, num_workers=0, pin_memory=False)
    marginal = torch.cat([-model.log_prob_marginal(x) / (model.dims * math.log(2)) for x, _ in batches])
    assert bpd == pytest.approx(marginal.detach().numpy(), abs=1e-6)


# The generative classifier on real data


def _digit_sets(shuffle: bool) -> tuple[Labelled, Labelled]:
    images, targets = _digits()
    x, y = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(targets).long()
    names = [str(d) for d in range(10)]
    train_labels = y[:1500][torch.randperm(1500, generator=torch.Generator().manual_seed(1))] if shuffle else y[:1500]
    return Labelled(x[:1500], train_labels, names), Labelled(x[1500:], y[1500:], names)


def _classify_accuracy(tmp_path: Path, shuffle: bool) -> float:
    """A tiny conditional Glow, 150 steps on sklearn's 1,500 training digits; the Bayes
    classifier's accuracy on the 297 test digits."""
    cfg = config_from_dict({
        "model": {**tiny_model("glow", (1, 8, 8), depth=2, width=16), "n_bits": 5, "num_classes": 10},
        "train": {"device": "cpu", "batch_size": 64, "max_steps": 150, "lr": 3e-3, "warmup_steps": 10, "seed": 0,
                  "log_every": 10_000, "eval_every": 10_000, "sample_every": 10_000, "checkpoint_every": 10_000}})
    train, test = _digit_sets(shuffle)
    torch.set_default_dtype(torch.float32)  # a real training: float32, as the CLI trains
    trainer = Trainer(cfg, tmp_path, NullLogger(), model=build_model(cfg), train_set=train, test_set=test,
                      progress_bar=False)
    trainer.run_loop()
    loader = make_loader(test, 297, shuffle=False, num_workers=0, pin_memory=False)
    result = classify(trainer.eval_model, loader, test.class_names)
    assert format_confusion(result).count("\n") == 10
    return result.accuracy


def test_generative_classifier_on_real_digits_beats_chance_and_shuffled_labels_do_not(tmp_path):
    # Chance is 0.1; a model blind to the labels (here: trained on shuffled ones) can only guess.
    # Measured: 0.89 (true labels) and 0.10 (shuffled) with this budget and seed.
    assert _classify_accuracy(tmp_path / "true", shuffle=False) > 0.6
    assert _classify_accuracy(tmp_path / "shuffled", shuffle=True) < 0.3


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_trains_conditionally_from_the_command_line(runs, tmp_path, arch):
    # Train (with label dropout), then every verb that takes a class: a grid with a row per class,
    # guided sampling, the conditional and marginal bits/dim, the classifier.
    data = runs["glow"].parents[2] / "data"
    ckpt = _train(tmp_path, arch, data, {**tiny_model(arch, (1, 8, 8)), "num_classes": 3, "label_dropout": 0.25},
                  steps=2)
    result = nfgen("sample", "--ckpt", ckpt, "--n", 6, "--guidance", 1, "--out", tmp_path / "s.png")
    assert result.exit_code == 0 and "3 rows of 2 (classes one, two, zero), guidance 1" in result.output, result.output
    result = nfgen("eval-bpd", "--ckpt", ckpt, "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert all(math.isfinite(report[k]["bits_per_dim"]) for k in ("conditional", "marginal"))
    result = nfgen("classify", "--ckpt", ckpt, "--out", tmp_path / "c.png")
    assert result.exit_code == 0 and "test accuracy" in result.output and (tmp_path / "c.png").exists(), result.output
