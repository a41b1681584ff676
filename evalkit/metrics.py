"""Sample-quality metrics on feature vectors and class logits.

- Frechet distance between feature Gaussians (FID when the features are Inception's),
  from features or from precomputed statistics (mean, covariance).
- Inception Score: exp(E_x KL(p(y|x) || p(y))), over splits, mean and standard deviation.
- Precision and recall on k-NN manifolds (Kynkaanniemi et al., 2019).
- Class-conditional accuracy of samples under a classifier.

Everything runs offline on tensors; the feature networks live in `evalkit.features`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class GaussianStats:
    """Mean `[D]` and covariance `[D, D]` (float64, unbiased) of `num` feature vectors."""

    mean: torch.Tensor
    cov: torch.Tensor
    num: int

    def __post_init__(self):
        self.mean = torch.as_tensor(self.mean, dtype=torch.float64)
        self.cov = torch.as_tensor(self.cov, dtype=torch.float64)
        d = self.mean.shape[-1] if self.mean.ndim == 1 else -1
        if self.mean.ndim != 1 or tuple(self.cov.shape) != (d, d):
            raise ValueError(f"expected a mean [D] and a covariance [D, D], got {tuple(self.mean.shape)} and "
                             f"{tuple(self.cov.shape)}")


def feature_stats(features: torch.Tensor) -> GaussianStats:
    """Mean and unbiased covariance of features `[N, D]`, in float64."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D] for a covariance, got {tuple(features.shape)}")
    x = features.to(torch.float64)
    mean = x.mean(0)
    centred = x - mean
    return GaussianStats(mean, centred.T @ centred / (len(x) - 1), len(x))


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """||m1 - m2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), the squared Wasserstein-2 distance of two Gaussians.

    Computed in float64 with symmetric eigendecompositions: tr (C1 C2)^(1/2) equals
    tr (C1^(1/2) C2 C1^(1/2))^(1/2), whose argument is symmetric positive semi-definite, so
    singular covariances (fewer samples than dimensions) need no regularising offset.
    """
    m1, m2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mean1, mean2))
    c1, c2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    if m1.shape != m2.shape or c1.shape != c2.shape or c1.shape != (m1.shape[-1],) * 2:
        raise ValueError(f"the two Gaussians have mismatched shapes: means {tuple(m1.shape)} and {tuple(m2.shape)}, "
                         f"covariances {tuple(c1.shape)} and {tuple(c2.shape)} (features of different networks?)")
    root1 = _sqrt_psd(c1)
    inner = root1 @ c2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    distance = (m1 - m2).square().sum() + c1.trace() + c2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)


def fid(a: torch.Tensor | GaussianStats, b: torch.Tensor | GaussianStats) -> float:
    """Frechet distance between two feature sets `[N, D]` or their precomputed `GaussianStats`."""
    sa = a if isinstance(a, GaussianStats) else feature_stats(a)
    sb = b if isinstance(b, GaussianStats) else feature_stats(b)
    return frechet_distance(sa.mean, sa.cov, sb.mean, sb.cov)


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score of class logits `[N, K]`: mean and standard deviation over `splits` consecutive parts.

    Per part, exp(mean_x KL(p(y|x) || p(y))) with p(y) the part's mean prediction; 1 when
    every prediction is the same, K when predictions are confident and classes balanced.
    Parts are taken in order, as in Salimans et al. (2016); interleave class-balanced samples.
    """
    if logits.ndim != 2:
        raise ValueError(f"expected logits [N, K], got {tuple(logits.shape)}")
    if splits < 1 or len(logits) < splits:
        raise ValueError(f"need at least `splits` ({splits}) predictions, got {len(logits)}")
    log_p = torch.log_softmax(logits.to(torch.float64), dim=1)
    scores = []
    for part in torch.tensor_split(log_p, splits):
        log_marginal = torch.logsumexp(part, dim=0) - math.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(float(kl.exp()))
    scores_t = torch.tensor(scores, dtype=torch.float64)
    return float(scores_t.mean()), float(scores_t.std(unbiased=False))


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    sq = a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2 * a @ b.T
    return sq.clamp_min_(0)


def knn_radii(features: torch.Tensor, k: int = 3, chunk_size: int = 1024) -> torch.Tensor:
    """Squared distance from each vector to its k-th nearest neighbour in the set (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"need more than k={k} feature vectors for k-NN radii, got {len(features)}")
    x = features.float()
    radii = torch.empty(len(x))
    for start in range(0, len(x), chunk_size):
        d = _squared_distances(x[start:start + chunk_size], x)
        radii[start:start + chunk_size] = d.kthvalue(k + 1, dim=1).values  # the vector itself is at distance 0
    return radii


def manifold_coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor,
                      chunk_size: int = 1024) -> float:
    """Fraction of `queries` inside at least one ball (centre `support[j]`, squared radius `radii[j]`)."""
    q, s = queries.float(), support.float()
    inside = 0
    for start in range(0, len(q), chunk_size):
        d = _squared_distances(q[start:start + chunk_size], s)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / max(len(q), 1)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk_size: int = 1024,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) of `fake` against `real` features.

    Precision: the fraction of fake samples inside the real manifold (the union of balls
    around real samples reaching their k-th nearest real neighbour); recall: the fraction of
    real samples inside the fake manifold. Distances are computed in chunks of rows, so 10k x
    10k sets need a few tens of MB. `real_radii` may be passed when cached.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected two feature sets [N, D] of one width, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    if real_radii is None:
        real_radii = knn_radii(real, k, chunk_size)
    precision = manifold_coverage(fake, real, real_radii, chunk_size)
    recall = manifold_coverage(real, fake, knn_radii(fake, k, chunk_size), chunk_size)
    return precision, recall


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str] | None = None
                   ) -> tuple[float, dict[str, float]]:
    """Fraction of samples classified as their (conditioning) label, overall and per class.

    Samples labelled -1 (unconditional) are left out.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"expected logits [N, K] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    keep = labels >= 0
    if not bool(keep.any()):
        raise ValueError("class accuracy needs labelled samples; every label is -1")
    if int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"label {int(labels.max())} is out of range for a classifier of {logits.shape[1]} classes")
    predicted, labels = logits[keep].argmax(1), labels[keep]
    correct = predicted == labels
    per_class = {}
    for c in labels.unique().tolist():
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        per_class[name] = float(correct[labels == c].double().mean())
    return float(correct.double().mean()), per_class
