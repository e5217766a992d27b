"""Evaluation in Rust against independent references: scikit-learn's KNeighborsClassifier
and LogisticRegression, numpy's SVD, and a numpy IDX parser."""

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

import byol_rs
from byol_rs import data as datasets
from byol_rs.eval import LinearProbe, effective_rank, knn_accuracy, knn_predict, z_std

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _digits():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) + 0.01 * torch.randn(len(x), 64, generator=torch.Generator().manual_seed(0))
    return x[:1400], torch.tensor(y[:1400]), x[1400:], torch.tensor(y[1400:])


def _numpy_weighted_knn(train, train_y, test, k, t):
    """The InstDisc vote written out: sum of exp(cos / T) over the k nearest, per class."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    sim = b @ a.T
    idx = np.argsort(-sim, axis=1)[:, :k]
    votes = np.zeros((len(test), train_y.max() + 1))
    for i in range(len(test)):
        np.add.at(votes[i], train_y[idx[i]], np.exp(sim[i, idx[i]] / t))
    return votes.argmax(1)


@pytest.mark.parametrize("k,chunk", [(200, 512), (20, 7), (1, 100)])
def test_knn_matches_numpy_and_sklearn(k, chunk):
    xtr, ytr, xte, yte = _digits()
    ours = knn_predict(xtr, ytr, xte, k=k, temperature=0.1, chunk=chunk).numpy()
    ref = _numpy_weighted_knn(xtr.double().numpy(), ytr.numpy(), xte.double().numpy(), k, 0.1)
    # Exact agreement except where fp32 vs fp64 similarities swap near-tied neighbours.
    assert (ours == ref).mean() >= 0.995
    sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                              weights=lambda d: np.exp((1 - d) / 0.1)).fit(xtr.numpy(), ytr.numpy())
    assert (ours == sk.predict(xte.numpy())).mean() >= 0.995
    acc = knn_accuracy(xtr, ytr, xte, yte, k=k, chunk=chunk)
    assert acc == pytest.approx((ours == yte.numpy()).mean(), abs=1e-12)


def test_knn_temperature_changes_votes():
    # Closed form: one query, three neighbours with cos 1, 0.8 (class 1) and 0.99 (class 0).
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.99, math.sqrt(1 - 0.99**2)]])
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.0]])
    # class 0: e^(1/T); class 1: e^(0.8/T) + e^(0.99/T). T=0.1: 22026 vs 2981 + 19930 = 22911 -> 1.
    assert knn_predict(bank, labels, q, k=3, temperature=0.1).item() == 1
    # T=0.01: e^100 vs e^80 + e^99 -> 0.
    assert knn_predict(bank, labels, q, k=3, temperature=0.01).item() == 0


@pytest.mark.parametrize("c", [0.05, 1.0])
def test_linear_probe_matches_sklearn(c):
    xtr, ytr, xte, _ = _digits()
    probe = LinearProbe.fit_fixed(xtr, ytr, c, max_iter=2000, tol=1e-9)
    scaler = StandardScaler().fit(xtr.double().numpy())
    sk = LogisticRegression(C=c, max_iter=10000, tol=1e-12).fit(scaler.transform(xtr.double().numpy()), ytr.numpy())
    ours = probe.predict_proba(xte).numpy()
    ref = sk.predict_proba(scaler.transform(xte.double().numpy()))
    # Same convex objective, both solved to high precision: probabilities within 1e-4.
    assert np.abs(ours - ref).max() < 1e-4
    w, b = probe.coef
    assert np.abs(w.numpy().T - sk.coef_).max() < 1e-3 * max(1.0, np.abs(sk.coef_).max())
    # sklearn's intercepts are defined up to a shared constant; compare centred.
    assert np.allclose(b.numpy() - b.numpy().mean(), sk.intercept_ - sk.intercept_.mean(), atol=1e-3)


def test_linear_probe_picks_c_on_held_out_train_split_only():
    xtr, ytr, xte, yte = _digits()
    probe = LinearProbe.fit(xtr, ytr, c_grid=(1e-4, 0.1, 10.0), val_fraction=0.2)
    assert len(probe.val_accuracy) == 3 and probe.c == (1e-4, 0.1, 10.0)[int(np.argmax(probe.val_accuracy))]
    assert probe.val_accuracy[0] < probe.val_accuracy[1]  # 1e-4 underfits badly
    # The choice depends on the training set alone and is deterministic (seeded split).
    again = LinearProbe.fit(xtr, ytr, c_grid=(1e-4, 0.1, 10.0), val_fraction=0.2)
    assert again.c == probe.c and torch.equal(again.coef[0], probe.coef[0])
    assert probe.accuracy(xte, yte) > 0.85  # sklearn scores 0.89-0.90 here


def test_effective_rank_and_z_std_closed_forms():
    g = torch.Generator().manual_seed(0)
    # Singular values 3, 2, 1 -> p = (1/2, 1/3, 1/6); erank = exp(-sum p log p).
    u, _ = torch.linalg.qr(torch.randn(50, 3, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(8, 3, generator=g, dtype=torch.float64))
    z = u @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ v.T
    p = np.array([1 / 2, 1 / 3, 1 / 6])
    # 1e-6: singular values come from the Gram matrix, whose zero eigenvalues round to ~1e-8.
    assert effective_rank(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert effective_rank(torch.ones(10, 4)) == pytest.approx(1.0, rel=1e-6)
    x = torch.randn(64, 16, generator=g)
    ref = torch.nn.functional.normalize(x, dim=1).std(0).mean().item()
    assert z_std(x) == pytest.approx(ref, rel=1e-5)
    assert z_std(torch.ones(8, 4)) == 0.0


def test_eval_bad_input_names_the_argument():
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(x, y[:5], x)
    with pytest.raises(ValueError, match="queries"):
        knn_predict(x, y, torch.randn(3, 5))
    with pytest.raises(ValueError, match="train_labels"):
        LinearProbe.fit(x, y.float())
    with pytest.raises(ValueError, match="c_grid"):
        LinearProbe.fit(x, y, c_grid=(-1.0,))
    with pytest.raises(ValueError, match="embeddings"):
        effective_rank(torch.randn(1, 4))


def _write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_roundtrip_and_corruption(tmp_path, gz):
    rng = np.random.default_rng(0)
    parts = {"train-images-idx3-ubyte": rng.integers(0, 256, (20, 6, 5)), "train-labels-idx1-ubyte": rng.integers(0, 3, 20),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 6, 5)), "t10k-labels-idx1-ubyte": rng.integers(0, 3, 4)}
    for stem, arr in parts.items():
        _write_idx(tmp_path / (stem + (".gz" if gz else "")), arr, gz)
    d = datasets.load_idx_dir(tmp_path)
    assert d.train_images.shape == (20, 1, 6, 5) and d.train_images.dtype == torch.uint8
    assert np.array_equal(d.train_images[:, 0].numpy(), parts["train-images-idx3-ubyte"])
    assert np.array_equal(d.test_labels.numpy(), parts["t10k-labels-idx1-ubyte"])
    victim = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(datasets.DatasetError, match="t10k-images.*(corrupt|holds)"):
        datasets.load_idx_dir(tmp_path)
    victim.unlink()
    with pytest.raises(datasets.DatasetError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_idx_dir(tmp_path)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_reader_matches_numpy_and_raw_pixel_knn():
    d = datasets.load()
    with gzip.open(FMNIST / "t10k-images-idx3-ubyte.gz") as f:
        ref = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10000, 28, 28)
    assert np.array_equal(d.test_images[:, 0].numpy(), ref)
    assert d.train_images.shape == (60000, 1, 28, 28) and int(d.train_labels.bincount().min()) == 6000
    # Reference figure (NOTES.md): weighted kNN on raw pixels, 60k bank, 10k test: 78.9 %.
    x = d.train_images.flatten(1).float()
    acc = knn_accuracy(x, d.train_labels, d.test_images.flatten(1).float(), d.test_labels)
    assert acc == pytest.approx(0.789, abs=0.002)
