"""Sample-quality metrics on fixed features: the Frechet distance against scipy's sqrtm and the
closed form for Gaussians, KID's unbiasedness and its formula, precision/recall on constructed
sets, the classifier-read share, the reference cache's key, and the Inception weights' errors."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import scipy.linalg
import torch
from datasets import write_image_folder

from nfgen.datasets.images import load_folder
from nfgen.tasks.fidelity import cache, sets
from nfgen.tasks.fidelity.features import INCEPTION_URL, Features, FeaturesError, inception_features, inception_weights
from nfgen.tasks.fidelity.metrics import Stats, frechet_distance, kid, precision_recall, read_shares, statistics

pytest.importorskip("torch_fidelity")


def _gaussian(n: int, mean: list[float], cov: np.ndarray, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.multivariate_normal(mean, cov, size=n))


def test_frechet_distance_matches_an_independent_sqrtm_computation():
    a = _gaussian(200, [0, 1, 2, 0, 0], np.diag([1, 2, 3, 1, 1]) + 0.3, 1)
    b = _gaussian(300, [1, 0, 2, 0.5, 0], np.eye(5) * 0.5 + 0.2, 2)
    mu1, mu2 = a.numpy().mean(0), b.numpy().mean(0)
    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(statistics(a), statistics(b)) == pytest.approx(expected, rel=1e-8)


def test_identical_sets_are_at_distance_zero():
    a = _gaussian(100, [0, 0, 0], np.eye(3), 3)
    assert abs(frechet_distance(statistics(a), statistics(a.clone()))) < 1e-8


def test_two_gaussians_match_the_closed_form():
    # Diagonal covariances: tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt s1 - sqrt s2)^2.
    m1, m2, v1, v2 = np.array([0.0, 1, 2]), np.array([1.0, 1, 0]), np.array([1.0, 4, 9]), np.array([4.0, 1, 1])
    closed = ((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()  # 5 + 1 + 1 + 4 = 11
    assert frechet_distance(Stats(m1, np.diag(v1)), Stats(m2, np.diag(v2))) == pytest.approx(closed, rel=1e-10)
    # The same from samples: statistics() estimates the moments (unbiased covariance).
    a = _gaussian(40000, list(m1), np.diag(v1), 4)
    b = _gaussian(40000, list(m2), np.diag(v2), 5)
    assert frechet_distance(statistics(a), statistics(b)) == pytest.approx(closed, abs=0.3)


def _brute_kid(x: np.ndarray, y: np.ndarray, biased: bool = False) -> float:
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / d + 1) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if biased or i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if biased or i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    norm = m * m if biased else m * (m - 1)
    return xx / norm + yy / norm - 2 * xy / (m * m)


def test_kid_is_the_unbiased_mmd_formula():
    x = _gaussian(12, [0, 0, 0, 0], np.eye(4), 6)
    y = _gaussian(12, [0.5, 0, 0, 0], np.eye(4), 7)
    mean, std, size = kid(x, y, subsets=1, subset_size=12)  # one subset of all 12: a permutation of each set
    assert size == 12 and std == 0
    assert mean == pytest.approx(_brute_kid(x.numpy(), y.numpy()), rel=1e-9)


def test_kid_is_unbiased_at_small_n():
    """Same distribution, 8 images a side: the estimate averages to 0 (the biased V-statistic
    does not, which shows the test can tell them apart)."""
    rng = np.random.default_rng(8)
    draws, biased = [], []
    for _ in range(300):
        x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
        draws.append(kid(torch.from_numpy(x), torch.from_numpy(y), subsets=1, subset_size=8)[0])
        biased.append(_brute_kid(x, y, biased=True))
    draws, biased = np.array(draws), np.array(biased)
    se = draws.std() / np.sqrt(len(draws))
    assert abs(draws.mean()) < 3 * se
    assert biased.mean() > 10 * biased.std() / np.sqrt(len(biased))


def test_kid_std_is_over_subsets():
    x = _gaussian(60, [0, 0], np.eye(2), 9)
    y = _gaussian(60, [1, 0], np.eye(2), 10)
    mean, std, size = kid(x, y, subsets=20, subset_size=30)
    assert size == 30 and std > 0 and mean > 0
    assert kid(x, y, subsets=20, subset_size=30, seed=1)[0] != mean  # another draw of subsets


def test_precision_and_recall_on_constructed_sets():
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 100  # two far-apart modes
    ref = torch.from_numpy(np.concatenate([a, b]))
    assert precision_recall(ref.clone(), ref) == (1.0, 1.0)
    # Mode dropping: the generated set is mode a only: every sample is real-looking, half the
    # real images are not covered.
    p, r = precision_recall(torch.from_numpy(a.copy()), ref)
    assert (p, r) == (1.0, 0.5)
    # Mode a, plus as many samples at a place no real image is: precision halves too.
    junk = rng.normal(size=(30, 2)) - 100
    p, r = precision_recall(torch.from_numpy(np.concatenate([a, junk])), ref)
    assert (p, r) == (0.5, 0.5)


def test_read_shares():
    logits = torch.tensor([[5.0, 0, 0], [0.1, 0, 0], [0, 0, 6], [0, 6, 0]])
    out = read_shares(logits, 0.9, torch.tensor([0, 0, 1, -1]))
    assert out["read_share"] == 0.75  # rows 0, 2, 3 are confident
    assert out["read_as_requested_share"] == pytest.approx(1 / 3)  # of the 3 labelled rows, only row 0
    assert out["n_labelled"] == 3


def test_request_labels_cycle_through_the_rows():
    labels, requested = sets.request_labels([2, 0, 5], 7, null=5)
    assert labels.tolist() == [2, 0, 5, 2, 0, 5, 2]
    assert requested.tolist() == [2, 0, -1, 2, 0, -1, 2]


def _counting(sha: str) -> tuple[Features, list[int]]:
    calls = [0]

    def extract(x: torch.Tensor) -> torch.Tensor:
        calls[0] += len(x)
        return x.flatten(1).float()[:, :6] + x.float().mean((1, 2, 3))[:, None]

    return Features("torchscript", "fake", sha, extract), calls


def test_reference_cache_is_reused_and_keyed_by_content(tmp_path: Path):
    rng = np.random.default_rng(12)
    images = rng.integers(0, 256, size=(10, 4, 4), dtype=np.uint8)
    paths = write_image_folder(tmp_path / "ref", images, split_dirs=False)
    feats, calls = _counting("a" * 64)
    where = tmp_path / "cache"
    first, status = sets.reference(load_folder(tmp_path / "ref", (1, 4, 4)), feats, where, 3)
    assert status == "miss" and calls[0] == 10
    again, status = sets.reference(load_folder(tmp_path / "ref", (1, 4, 4)), feats, where, 4)
    assert status == "hit" and calls[0] == 10  # no feature was computed
    assert torch.equal(again.features, first.features) and np.array_equal(again.stats.sigma, first.stats.sigma)
    # One pixel of one image changes under the same file name: the content key changes.
    changed = images[3].copy()
    changed[0, 0] ^= 1
    write_image_folder(tmp_path / "tmp", [changed], split_dirs=False)[0].replace(paths[3])
    _, status = sets.reference(load_folder(tmp_path / "ref", (1, 4, 4)), feats, where, 3)
    assert status == "miss" and calls[0] == 20
    # Other feature weights: another key too.
    other, other_calls = _counting("b" * 64)
    _, status = sets.reference(load_folder(tmp_path / "ref", (1, 4, 4)), other, where, 3)
    assert status == "miss" and other_calls[0] == 10
    assert len(list(where.glob("ref-*.pt"))) == 3
    # No cache: always computed, nothing written.
    _, status = sets.reference(load_folder(tmp_path / "ref", (1, 4, 4)), feats, None, 3)
    assert status == "off" and calls[0] == 30


def test_a_corrupt_cache_entry_is_recomputed(tmp_path: Path):
    images = np.random.default_rng(13).integers(0, 256, size=(6, 4, 4), dtype=np.uint8)
    write_image_folder(tmp_path / "ref", images, split_dirs=False)
    feats, calls = _counting("c" * 64)
    data = load_folder(tmp_path / "ref", (1, 4, 4))
    ref, _ = sets.reference(data, feats, tmp_path / "cache", 6)
    cache.entry_path(tmp_path / "cache", ref.content_sha256, feats.sha256).write_bytes(b"not a cache entry")
    _, status = sets.reference(data, feats, tmp_path / "cache", 6)
    assert status == "miss" and calls[0] == 12


def test_missing_inception_weights_say_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(FeaturesError) as e:
        inception_weights(tmp_path / "nope.pth")
    assert "nope.pth" in str(e.value) and INCEPTION_URL in str(e.value)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url: str, dst: str) -> None:
        raise URLError("no network")

    with pytest.raises(FeaturesError) as e:
        inception_weights(None, fetch=offline)
    message = str(e.value)
    assert str(tmp_path / "hub" / "checkpoints") in message and "--inception-weights" in message
    assert "\n" not in message
    # Once the file is there (put by hand, or downloaded), it is used without fetching.
    target = tmp_path / "hub" / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]
    target.write_bytes(b"x")
    assert inception_weights(None, fetch=offline) == target


def test_inception_path_replicates_grey_to_three_channels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The real Inception code path with random weights in the right format (the real ones
    cannot be downloaded here): grey images give the features of their RGB replication."""
    from torch_fidelity import feature_extractor_inceptionv3 as fx

    monkeypatch.setattr(fx.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    monkeypatch.setattr(fx, "load_state_dict_from_url", lambda *a, **k: {})
    torch.manual_seed(0)
    net = fx.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    feats = inception_features(weights, torch.device("cpu"))
    grey = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    out = feats.extract(grey)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    assert torch.equal(out, feats.extract(grey.expand(-1, 3, -1, -1).contiguous()))
    torch.save({"w": torch.zeros(1)}, tmp_path / "bad.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    for bad in ("bad.pth", "junk.pth"):
        with pytest.raises(FeaturesError, match="is not the FID Inception weights"):
            inception_features(tmp_path / bad, torch.device("cpu"))
