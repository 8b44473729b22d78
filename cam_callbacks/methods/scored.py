"""CAMs that differentiate another score than the target logit, or differentiate it twice: Shapley-CAM, Finer-CAM.

Each method registers its *score* (``score=``, see ``cam_callbacks.methods.registry``); the engine hands the
method the gradients of that score (and, for Shapley-CAM, the Hessian-vector product ``H A``) w.r.t. the target
layer's activations (``cam_callbacks.engine.scored``). The map functions below are pure functions of them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from cam_callbacks.methods.common import weighted_sum
from cam_callbacks.methods.registry import register_method

#: What Shapley-CAM's ``objective`` option accepts.
SHAPLEY_OBJECTIVES = ("logit", "rest")


def _chosen(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.gather(1, targets[:, None]).squeeze(1)


def shapley_score(logits: Tensor, targets: Tensor, objective: str = "logit") -> Tensor:
    """Shapley-CAM's score: the target logit ``z_t`` (``"logit"``) or ReST, ``z_t - CE(z, t) = z_t + log softmax(z)_t``
    (``"rest"``, the paper's residual softmax target).

    Example::

        >>> shapley_score(torch.tensor([[1.0, 1.0]]), torch.tensor([0]), "rest")  # 1 + log(1/2)
        tensor([0.3069])
    """
    _check_objective(objective)
    chosen = _chosen(logits, targets)
    return chosen if objective == "logit" else chosen + _chosen(torch.log_softmax(logits, dim=1), targets)


def _check_objective(objective: Any) -> None:
    if objective not in SHAPLEY_OBJECTIVES:
        raise ValueError(f"shapleycam option objective={objective!r} is not valid; choose from {list(SHAPLEY_OBJECTIVES)}")


@register_method(
    "shapleycam",
    needs=("activations", "gradients", "hessian_vector"),
    score=shapley_score,
    options={"objective": "logit"},
    check_options=lambda options: _check_objective(options["objective"]),
    summary="Shapley-CAM: gradient minus half the Hessian-vector product, averaged per channel",
)
def shapleycam(activations: Tensor, gradients: Tensor, hessian_vector: Tensor) -> Tensor:
    """Shapley-CAM (Cai 2024, "CAMs as Shapley value-based explainers", arXiv:2501.06261).

    A second-order Taylor view of each channel's Shapley value: ``w_k = mean_ij(g_kij - 1/2 (H A)_kij)``, map
    ``ReLU(sum_k w_k A_k)``, where ``g`` is the gradient of the score w.r.t. the activations ``A`` and ``H A`` its
    Hessian applied to ``A``. The score is the target logit by default (``objective="logit"``, pytorch-grad-cam's
    default target), or the paper's ReST ``z_t - CE(z, t)`` (``objective="rest"``). With the logit and a tail that is
    piecewise linear in ``A`` (ReLU, pooling, linear layers: resnet's ``layer4``) ``H A = 0`` and the map is Grad-CAM's.
    """
    weights = (gradients - 0.5 * hessian_vector).mean(dim=(2, 3))
    return torch.relu(weighted_sum(weights, activations))


def _check_contrast_options(alpha: float, k: int) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"finercam option alpha must be a finite number, got {alpha!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"finercam option k must be a positive int (the number of similar classes), got {k!r}")


def contrast_score(logits: Tensor, targets: Tensor, alpha: float = 0.6, k: int = 3) -> Tensor:
    """Finer-CAM's score ``z_t - alpha * mean_j z_j`` over the ``k`` classes whose logits are closest to ``z_t``.

    The similar classes are chosen on the detached logits, the target excluded, ``k`` capped at ``classes - 1``
    (torchcam's convention: closest by ``|z_j - z_t|``).

    Example::

        >>> contrast_score(torch.tensor([[3.0, 2.5, -4.0, 2.0]]), torch.tensor([0]), alpha=1.0, k=2)  # 3 - (2.5 + 2) / 2
        tensor([0.7500])
    """
    _check_contrast_options(alpha, k)
    if logits.shape[1] < 2:
        raise ValueError("finercam needs a model with at least 2 classes (it contrasts the target with similar classes)")
    detached = logits.detach()
    distances = (detached - _chosen(detached, targets)[:, None]).abs()
    distances.scatter_(1, targets[:, None], float("inf"))
    similar = distances.topk(min(k, logits.shape[1] - 1), dim=1, largest=False).indices
    return _chosen(logits, targets) - alpha * logits.gather(1, similar).mean(dim=1)


@register_method(
    "finercam",
    needs=("activations", "gradients"),
    score=contrast_score,
    options={"alpha": 0.6, "k": 3},
    check_options=lambda options: _check_contrast_options(options["alpha"], options["k"]),
    summary="Finer-CAM: Grad-CAM of the target logit minus alpha x the mean of the k most similar classes' logits",
)
def finercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Finer-CAM (Zhang et al. 2025, "Finer-CAM: Spotting the difference reveals finer details for visual
    explanation", CVPR 2025, arXiv:2501.11309) on Grad-CAM.

    Grad-CAM's map ``ReLU(sum_k mean_ij(g_kij) A_k)`` with ``g`` the gradient of ``contrast_score``,
    ``z_t - alpha * mean_j z_j`` over the ``k`` classes with the logits closest to the target's (options ``alpha``,
    default 0.6, and ``k``, default 3, as torchcam's ``FinerCAM(gamma=0.6, num_references=3)``). pytorch-grad-cam's
    ``FinerCAM`` uses another score (a softmax-weighted sum of ``z_t - alpha z_j``, ``alpha=1``).
    """
    return torch.relu(weighted_sum(gradients.mean(dim=(2, 3)), activations))
