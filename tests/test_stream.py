"""The batch stream: a stream started at a position draws exactly what one that went on draws,
and it leaves the run's progress to the loop."""

from __future__ import annotations

import torch
from archs import tiny_model
from datasets import digits

from nfgen.config.schema import config_from_dict
from nfgen.datasets.labels import Labelled
from nfgen.model.image_flow import build_model
from nfgen.training.distributed import Rank
from nfgen.training.stream import BatchStream


def _stream(rank: Rank | None = None) -> BatchStream:
    cfg = config_from_dict({
        "model": {**tiny_model("glow", (1, 8, 8)), "n_bits": 5, "num_classes": 3, "label_dropout": 0.2},
        "data": {"hflip": True, "num_workers": 0},
        "train": {"device": "cpu", "batch_size": 8, "seed": 4}})
    images = torch.from_numpy(digits()[:36]).unsqueeze(1)
    data = Labelled(images, images.flatten(1).long().sum(1) % 3, ["a", "b", "c"])
    return BatchStream(data, build_model(cfg), cfg, rank or Rank(), torch.device("cpu"))


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.batch, b.batch)) and a[1:] == b[1:]


def test_a_stream_started_at_a_position_draws_what_one_that_went_on_draws():
    stream = _stream()
    torch.manual_seed(0)
    going = stream.batches()
    first = [next(going) for _ in range(5)]  # 36 images, batches of 8: 4 an epoch, the 5th starts epoch 1
    assert [(d.epoch, d.batch_in_epoch) for d in first] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1)]
    rng = torch.get_rng_state()
    rest = [next(going) for _ in range(6)]
    going.close()
    # As a resumed run: from the position after the 5th batch, with the RNG state saved there.
    torch.set_rng_state(rng)
    resumed = stream.batches(first[-1].epoch, first[-1].batch_in_epoch)
    again = [next(resumed) for _ in range(6)]
    resumed.close()
    assert all(_same(a, b) for a, b in zip(rest, again))
    # Also from the end of an epoch (the position a checkpoint after its last batch holds).
    torch.manual_seed(0)
    going = stream.batches()
    [next(going) for _ in range(4)]
    rng, tail = torch.get_rng_state(), [next(going) for _ in range(3)]
    going.close()
    torch.set_rng_state(rng)
    resumed = stream.batches(0, 4)
    assert all(_same(a, next(resumed)) for a in tail)
    resumed.close()


def test_two_ranks_draw_the_single_process_batch_in_halves():
    torch.manual_seed(1)
    one = next(_stream().batches()).batch
    halves = []
    for r in range(2):
        torch.manual_seed(1)
        halves.append(next(_stream(Rank(r, 2)).batches()).batch)
    for field in range(4):
        assert torch.equal(torch.cat([h[field] for h in halves]), one[field])
