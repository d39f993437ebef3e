"""Two processes under torchrun (gloo, CPU) compute what one process computes on the same
global batch: same data slices, same noise, identical actnorm init, averaged gradients. The two
processes also run memory saving, whose parameter gradients reach DDP's all-reduce through
autograd like any other. A class-conditional run keeps each image's label with it in the ranks'
slices, and the ranks drop the labels (label dropout) that one process drops."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from archs import ARCHS, plugins, tiny_model
from datasets import digits, write_image_folder
from PIL import Image


def _write_classes(root, images: np.ndarray, n_test: int, k: int) -> None:
    """Image i in class folder ``i % k`` of train/ (the last ``n_test`` in test/)."""
    for i, im in enumerate(images):
        folder = root / ("test" if i >= len(images) - n_test else "train") / f"c{i % k}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / f"{i:04d}.png")


# Every registered architecture (a new one may hold buffers or parameters DDP must see), but those
# that add no code path of their own here; classes: a class-conditional run with label dropout.
SAME_PATHS = {"realnvp": "couplings, masks and conditioners as Glow's and Flow++'s"}
CASES = [(arch, 0) for arch in ARCHS if arch not in SAME_PATHS] + [("glow", 3)]


@pytest.mark.parametrize("arch, classes", CASES)
def test_two_process_run_matches_single_process(tmp_path, arch, classes):
    if classes:
        _write_classes(tmp_path / "data", digits(8)[:56], n_test=8, k=classes)
    else:
        write_image_folder(tmp_path / "data", list(digits(8)[:56]), split_dirs=True, n_test=8)
    conditional = {"num_classes": classes, "label_dropout": 0.25} if classes else {}
    cfg = {
        "name": "ddp", "plugins": plugins(arch),
        "data": {"dataset": "folder", "root": str(tmp_path / "data"), "num_workers": 0, "labels": classes > 0},
        "model": {**tiny_model(arch, (1, 8, 8), width=16), "n_bits": 5, **conditional},
        "dequantization": {"kind": "variational", "steps": 2, "hidden": 8},
        "train": {"device": "cpu", "batch_size": 16, "max_steps": 5, "warmup_steps": 2, "seed": 3,
                  "grad_accum": 2, "log_every": 1, "eval_every": 5, "sample_every": 100,
                  "checkpoint_every": 100, "ema_decay": 0.9},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    train = ["train", "--config", str(config), "--no-progress", "--run-dir"]
    single = subprocess.run([sys.executable, "-m", "nfgen", *train, str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "nfgen", *train, str(tmp_path / "two"), "--set", "train.memory_saving=true"],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Warning" not in two.stderr, two.stderr[-3000:]  # e.g. DDP's grad-stride mismatch

    a = torch.load(tmp_path / "one/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "two/checkpoints/last.pt", weights_only=True)
    assert a["progress"]["step"] == b["progress"]["step"] == 5
    worst = max((a["model"][k].double() - b["model"][k].double()).abs().max().item()
                for k in a["model"] if a["model"][k].is_floating_point())
    assert worst < 1e-5, worst  # float32 sums in a different order: equal to rounding, not bitwise
    for k in a["model"]:
        if not a["model"][k].is_floating_point():
            assert torch.equal(a["model"][k], b["model"][k])
    # Evaluation is sharded and gathered: close to the single-process figure (noise draws differ).
    assert abs(a["progress"]["best_bpd"] - b["progress"]["best_bpd"]) < 0.05
