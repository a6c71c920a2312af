"""Metrics only a model with an encoder has: reconstruction error, the ELBO and a linear
probe on the latent means.

Works with any model that has ``encode(images, labels) -> (mean, logvar)``,
``reconstruct(images, labels)`` and a ``training_loss`` returning ``reconstruction``, ``kl``
and ``elbo`` (the :class:`~genmnist.models.vae.VAE` family).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from genmnist.data import InMemoryDataset


def has_encoder(model: Any) -> bool:
    """True if ``model`` looks like a VAE (see the module docstring)."""
    return all(callable(getattr(model, name, None)) for name in ("encode", "reconstruct"))


def _labels_for(model: Any, labels: torch.Tensor) -> torch.Tensor | None:
    return labels.to(model.device) if getattr(model, "conditional", False) else None


@torch.inference_mode()
def latent_means(
    model: Any, data: InMemoryDataset, n: int | None = None, batch_size: int = 1000
) -> torch.Tensor:
    """Posterior means of the first ``n`` images of ``data``, ``(n, latent_dim)``."""
    model.eval()
    n = len(data) if n is None else min(n, len(data))
    out = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        images, labels = data.batch(idx)
        mean, _ = model.encode(images.to(model.device), _labels_for(model, labels))
        out.append(mean.float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def reconstruction_metrics(
    model: Any, data: InMemoryDataset, n: int | None = None, batch_size: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Reconstruction error and ELBO on the first ``n`` images of ``data`` (the test split).

    Returns:
        ``recon_bce`` (Bernoulli negative log-likelihood of the image under its
        reconstruction from the posterior mean, nats per image), ``recon_mse`` (mean squared
        error per pixel of that reconstruction), and ``elbo``, ``elbo_reconstruction`` and
        ``elbo_kl`` (the evidence lower bound in nats per image, higher is better, with one
        posterior sample per image, seeded, and its two terms).
    """
    model.eval()
    n = len(data) if n is None else min(n, len(data))
    sums = {"recon_bce": 0.0, "recon_mse": 0.0, "elbo": 0.0, "rec": 0.0, "kl": 0.0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(n, start + batch_size))
            images, labels = data.batch(idx)
            images = images.to(model.device)
            cond = _labels_for(model, labels)
            recon = model.reconstruct(images, cond).float().clamp(1e-6, 1 - 1e-6)
            target = images.float().cpu()
            b = len(idx)
            bce = F.binary_cross_entropy(recon, target, reduction="none").flatten(1).sum(1)
            sums["recon_bce"] += float(bce.sum())
            sums["recon_mse"] += float((recon - target).square().mean(dim=(1, 2, 3)).sum())
            losses = model.training_loss(images, labels.to(model.device), step=10**9)
            sums["elbo"] += float(losses["elbo"]) * b
            sums["rec"] += float(losses["reconstruction"]) * b
            sums["kl"] += float(losses["kl"]) * b
    return {
        "recon_bce": sums["recon_bce"] / n,
        "recon_mse": sums["recon_mse"] / n,
        "elbo": sums["elbo"] / n,
        "elbo_reconstruction": sums["rec"] / n,
        "elbo_kl": sums["kl"] / n,
    }


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    steps: int = 100,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on ``train_features``.

    Features are standardised with the training statistics; the regression is fitted by
    L-BFGS (deterministic for a seed).
    """
    mean = train_features.mean(0, keepdim=True)
    std = train_features.std(0, keepdim=True).clamp_min(1e-6)
    x_train = ((train_features - mean) / std).double()
    x_test = ((test_features - mean) / std).double()
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        linear = torch.nn.Linear(x_train.shape[1], classes).double()
        optimizer = torch.optim.LBFGS(
            linear.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe"
        )

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(linear(x_train), train_labels)
            loss = loss + weight_decay * linear.weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        predicted = linear(x_test).argmax(1)
    return float((predicted == test_labels).double().mean())


def vae_metrics(
    model: Any,
    train: InMemoryDataset,
    test: InMemoryDataset,
    n: int = 10000,
    probe_train: int = 10000,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`reconstruction_metrics` on ``n`` test images plus ``latent_probe_accuracy``:
    a linear probe trained on the latent means of ``probe_train`` training images and tested
    on those of the ``n`` test images (how linearly the latent space separates classes; for
    a class-conditional VAE a low value is expected, since the label is given separately).
    """
    result = reconstruction_metrics(model, test, n, seed=seed)
    n_test = min(n, len(test))
    n_train = min(probe_train, len(train))
    train_z = latent_means(model, train, n_train)
    test_z = latent_means(model, test, n_test)
    result["latent_probe_accuracy"] = linear_probe_accuracy(
        train_z, train.labels[:n_train], test_z, test.labels[:n_test], seed=seed
    )
    return result
