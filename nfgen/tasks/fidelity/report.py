"""One evaluation's numbers from its two feature sets, and their one-line summary."""

from __future__ import annotations

from nfgen.tasks.fidelity.cache import Reference
from nfgen.tasks.fidelity.metrics import frechet_distance, kid, precision_recall, read_shares, statistics
from nfgen.tasks.fidelity.sets import Generated


def compare(gen: Generated, ref: Reference, kid_subsets: int = 100, kid_subset_size: int = 1000, k: int = 3,
            threshold: float = 0.9, seed: int = 0) -> dict:
    """FID, KID (mean and std over subsets), precision and recall, and with class logits the
    classifier-read shares of both sets (the reference's: how often the classifier reads real
    images confidently, the ceiling the generated share is read against)."""
    if len(gen.features) < 2:
        raise ValueError(f"FID needs at least 2 finite generated images, got {len(gen.features)}")
    kid_mean, kid_std, size = kid(gen.features, ref.features, kid_subsets, kid_subset_size, seed)
    precision, recall = precision_recall(gen.features, ref.features, k)
    out = {"fid": frechet_distance(statistics(gen.features), ref.stats),
           "kid": {"mean": kid_mean, "std": kid_std, "subsets": kid_subsets, "subset_size": size,
                   "estimator": "unbiased MMD^2, kernel (x.y / F + 1)^3"},
           "precision": precision, "recall": recall, "pr_k": k, "feature_dim": int(gen.features.shape[1])}
    if gen.logits is not None:
        out["classifier"] = {
            "rule": f"read confidently: the largest softmax probability >= {threshold:g}; read as the "
                    "requested class: that, and the most probable class is the one the sample was drawn for",
            "threshold": threshold,
            "generated": read_shares(gen.logits, threshold, gen.requested),
            "reference": read_shares(ref.logits, threshold) if ref.logits is not None else None}
    return out


def summary(result: dict, n_gen: int, n_ref: int, n_nonfinite: int) -> str:
    kid = result["kid"]
    line = (f"FID {result['fid']:.4f}  KID {kid['mean']:.6f} ± {kid['std']:.6f}  precision {result['precision']:.4f}  "
            f"recall {result['recall']:.4f}  ({n_gen} generated, {n_ref} reference images")
    line += f"; {n_nonfinite} non-finite samples left out)" if n_nonfinite else ")"
    c = result.get("classifier")
    if c:
        g = c["generated"]
        line += f"\nclassifier-read share (max softmax >= {c['threshold']:g}): generated {g['read_share']:.4f}"
        if g.get("read_as_requested_share") is not None:
            line += f", read as the requested class {g['read_as_requested_share']:.4f}"
        if c["reference"] is not None:
            line += f"; reference {c['reference']['read_share']:.4f}"
    return line
