"""Sample quality during training (``train.fid_every``): FID, KID, precision/recall and, with a
classifier's logits, the classifier-read share of ``train.fid_samples`` samples against the test
split, logged beside bits/dim. The features and the reference are set up once, at the first
measurement (a missing extractor is refused before training starts: ``check``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from nfgen.config.schema import TrainConfig
from nfgen.model.image_flow import ImageFlow
from nfgen.tasks.fidelity import sets
from nfgen.tasks.fidelity.cache import Reference
from nfgen.tasks.fidelity.features import Features, inception_features, inception_weights, torchscript_features
from nfgen.tasks.fidelity.report import compare


class FidMonitor:
    def __init__(self, t: TrainConfig, test_set: Dataset, device: torch.device) -> None:
        self.t, self.test_set, self.device = t, test_set, device
        self.features: Features | None = None
        self.reference: Reference | None = None

    def check(self) -> None:
        """Load the extractor now, so a wrong path fails before any training."""
        if self.t.fid_every and self.features is None:
            self.features = (torchscript_features(Path(self.t.fid_features), self.device) if self.t.fid_features
                             else inception_features(inception_weights(), self.device))

    def measure(self, model: ImageFlow) -> dict[str, float]:
        """The scalars to log (``test/fid``, ...); the caller runs this on a forked RNG."""
        self.check()
        assert self.features is not None
        if self.reference is None:
            self.reference, _ = sets.reference(self.test_set, self.features, None, 250)
        n, labels, requested = self.t.fid_samples, None, None
        if model.num_classes:
            labels, requested = sets.request_labels(list(range(model.num_classes)), n, model.num_classes)
        gen = sets.from_model(model, self.features, n, min(250, n), 1.0, labels, denoise=model.noise_sigma is not None,
                              seed=self.t.seed + 3, requested=requested)
        r = compare(gen, self.reference, kid_subset_size=1000)
        out = {"test/fid": r["fid"], "test/kid": r["kid"]["mean"], "test/precision": r["precision"],
               "test/recall": r["recall"], "test/fid_nonfinite_samples": float(gen.n_nonfinite)}
        if "classifier" in r:
            out["test/classifier_read_share"] = r["classifier"]["generated"]["read_share"]
            if r["classifier"]["generated"].get("read_as_requested_share") is not None:
                out["test/classifier_read_as_requested"] = r["classifier"]["generated"]["read_as_requested_share"]
        return out
