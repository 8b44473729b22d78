"""More gradient-free CAMs from the activations alone: FEM (Feature Explanation Method).

Each function returns the raw ``(N, h, w)`` map (see ``cam_callbacks.methods.registry``).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from cam_callbacks.methods.registry import register_method


@register_method("fem", needs=("activations",), summary="FEM: k-sigma binarised channels weighted by their means", options={"k": 2.0})
def fem(activations: Tensor, k: float = 2.0) -> Tensor:
    """FEM, Feature Explanation Method (Fuad, Martin, Giot, Bourqui, Benois-Pineau & Zemmari 2020, "Features
    understanding in 3D CNNs for actions recognition in video", IPTA 2020).

    Each channel is binarised by the k-sigma rule over its own positions, ``B_kij = 1[A_kij > mu_k + k sigma_k]``
    (``mu_k``, ``sigma_k`` the mean and population standard deviation of channel ``k`` over ``h*w``), and the
    binary maps are summed weighted by the channel means: ``ReLU(sum_k mu_k B_k)``. This is the authors'
    published code (a strict ``>``; Xplique uses ``>=``, equal unless a value sits exactly on the threshold);
    their max-normalisation equals this package's min-max after the ReLU whenever some position is 0.
    Class-agnostic: no gradients, no target.

    pytorch-grad-cam's ``FEM`` differs by construction: it weights the *activations* by the fraction of
    each channel's positions above the threshold, ``sum_k mean_ij(B_kij) A_k``.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        raise ValueError(f"fem: k must be a number, got {k!r}")
    flat = activations.flatten(2)
    means = flat.mean(dim=2)
    threshold = means + float(k) * flat.std(dim=2, correction=0)
    binary = (activations > threshold[:, :, None, None]).to(activations.dtype)
    return torch.relu(torch.einsum("nk,nkhw->nhw", means, binary))
