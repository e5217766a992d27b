"""Evaluation of frozen features, computed in Rust (src/eval/): weighted kNN, a linear
probe and collapse diagnostics."""

from __future__ import annotations

from typing import Callable, List, Sequence

import torch

from . import _core


def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, *,
                k: int = 200, temperature: float = 0.1, chunk: int = 512) -> torch.Tensor:
    """Weighted kNN on cosine similarity (InstDisc / solo-learn): the k nearest training
    features vote for their class with weight ``exp(sim / temperature)``. Queries are
    processed ``chunk`` at a time, so memory is ``chunk x len(train)`` floats."""
    return _core.knn_predict(train, train_labels, queries, k, temperature, chunk)


def knn_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                 test_labels: torch.Tensor, *, k: int = 200, temperature: float = 0.1,
                 chunk: int = 512) -> float:
    """Fraction of ``test`` classified correctly by :func:`knn_predict`."""
    return _core.knn_accuracy(train, train_labels, test, test_labels, k, temperature, chunk)


def z_std(embeddings: torch.Tensor) -> float:
    """Mean over dimensions of the std of the l2-normalised embeddings: 1/sqrt(D) ideal, 0 collapsed."""
    return _core.z_std(embeddings)


def effective_rank(embeddings: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values (RankMe); 1 means collapsed to a line."""
    return _core.effective_rank(embeddings)


class LinearProbe:
    """Multinomial logistic regression on standardised frozen features, fitted by L-BFGS in
    Rust. The L2 strength (scikit-learn's ``C``) is chosen from ``c_grid`` on a held-out
    ``val_fraction`` of the training features (never the test set), then the probe is refit
    on all of them.

    >>> probe = LinearProbe.fit(torch.randn(100, 5), torch.arange(100) % 3)
    >>> 0.0 <= probe.accuracy(torch.randn(10, 5), torch.arange(10) % 3) <= 1.0
    True
    """

    def __init__(self, engine: "_core.LinearProbe") -> None:
        self._engine = engine

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, *,
            c_grid: Sequence[float] = (0.01, 0.1, 1.0, 10.0), val_fraction: float = 0.1,
            max_iter: int = 100, tol: float = 1e-6, seed: int = 0) -> "LinearProbe":
        return cls(_core.LinearProbe.fit(features, labels, [float(c) for c in c_grid],
                                         val_fraction, max_iter, tol, seed, True))

    @classmethod
    def fit_fixed(cls, features: torch.Tensor, labels: torch.Tensor, c: float, *,
                  max_iter: int = 100, tol: float = 1e-6) -> "LinearProbe":
        """Fits with a given ``C`` on all the features (for comparison with scikit-learn)."""
        return cls(_core.LinearProbe.fit(features, labels, [float(c)], 0.1, max_iter, tol, 0, False))

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._engine.predict_proba(features)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return self._engine.accuracy(features, labels)

    @property
    def c(self) -> float:
        """The chosen inverse regularisation strength."""
        return self._engine.c

    @property
    def val_accuracy(self) -> List[float]:
        """Held-out accuracy for each candidate C."""
        return self._engine.val_accuracy

    @property
    def coef(self):
        """``(weight [D, classes], bias [classes])`` on standardised features."""
        return self._engine.coef


@torch.no_grad()
def embed_all(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
              batch_size: int = 1024) -> torch.Tensor:
    """Features of ``images`` (already in the model's input format), in batches."""
    return torch.cat([embed(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
