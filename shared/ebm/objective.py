"""The contrastive-divergence objective for the energy network (and JEM's classification term).

maximum likelihood for p_theta(x) = exp(-E_theta(x)) / Z(theta) has the gradient
    grad_theta [-log p(x+)] = grad_theta E(x+) - E_{x- ~ p_theta}[grad_theta E(x-)]
(Hinton 2002; Du & Mordatch 2019, Eq. 2), estimated with negatives x- from Langevin chains, so the
loss whose gradient it is reads E(x+) - E(x-) with x- held fixed. The regulariser
alpha * (E(x+)^2 + E(x-)^2) keeps energies near zero (Du & Mordatch 2019, Sec. 3.3). JEM
(Grathwohl et al. 2020, Eq. 8) adds the cross-entropy of p(y | x+) = softmax(f(x+))[y].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shared.ebm.energy import EnergyNet, jem_energy


@dataclass(frozen=True)
class CDTerms:
    loss: torch.Tensor  # the scalar to minimise
    energy_pos: float  # mean E(x+)
    energy_neg: float  # mean E(x-)
    cross_entropy: float  # 0 without labels


def contrastive_divergence_loss(
    net: EnergyNet,
    x_pos: torch.Tensor,
    x_neg: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    alpha: float = 1.0,
    ce_weight: float = 1.0,
) -> CDTerms:
    """CD loss on data x_pos and (detached) negatives x_neg; with labels, plus ce_weight * CE."""
    if x_pos.shape != x_neg.shape:
        raise ValueError(f"data {tuple(x_pos.shape)} and negatives {tuple(x_neg.shape)} must have the same shape")
    x_neg = x_neg.detach()
    logits = net(torch.cat([x_pos, x_neg]))  # one forward for both: (2B, K)
    logits_pos, logits_neg = logits.chunk(2)
    if net.config.num_classes is None:
        e_pos, e_neg = logits_pos.squeeze(1), logits_neg.squeeze(1)
    else:  # JEM Eq. 5: E(x) = -logsumexp_y f(x)[y]
        e_pos, e_neg = -torch.logsumexp(logits_pos, 1), -torch.logsumexp(logits_neg, 1)
    loss = e_pos.mean() - e_neg.mean() + alpha * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
    ce = torch.zeros((), device=x_pos.device)
    if labels is not None and net.config.num_classes is not None:
        ce = F.cross_entropy(logits_pos, labels)  # JEM Eq. 8: log p(y | x)
        loss = loss + ce_weight * ce
    return CDTerms(loss, e_pos.mean().item(), e_neg.mean().item(), ce.item())


@dataclass(frozen=True)
class RecoveryTerms:
    loss: torch.Tensor  # the scalar to minimise
    energy_pos: float  # mean E(y+, t)
    energy_neg: float  # mean E(y-, t)
    cross_entropy: float = 0.0  # mean -log p(c | y+, t) of the energy's own classifier (0 when not trained)


def recovery_likelihood_loss(
    net: EnergyNet,
    y_pos: torch.Tensor,
    y_neg: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
    ce_weight: float = 0.0,
) -> RecoveryTerms:
    """The recovery-likelihood gradient's loss (Gao et al. 2021, Eq. 9): mean_i w_i (E(y+_i, t_i) - E(y-_i, t_i)).

    y+ = a_{t+1} x_t from the data, y- from the conditional chain started at the data's x_{t+1}
    (held fixed); w = sigma_1 / sigma_{t+1} (the reference code's per-level scale). The quadratic
    recovery term of Eq. 8 does not depend on theta, so it drops out of the gradient.
    Labels (B,) ask for E(y, t, c) = -f(y, t)[c]; -1 for the marginal -logsumexp_c f (JEM Eq. 5).

    With `classes` (B,) (the data's true classes) and ce_weight > 0, plus ce_weight * the cross-entropy
    of p(c | y+, t) = softmax_c f(y+, t) (JEM, Grathwohl et al. 2020, Eq. 8, here at every noise level):
    the contrastive term alone only compares an image with its own chain's negative under one class,
    so nothing makes f(y, t)[c] larger for images of class c than for others; this term does, and it
    is what conditioning and guidance on the energy read. Both terms use the same forward pass.
    """
    if y_pos.shape != y_neg.shape:
        raise ValueError(f"data {tuple(y_pos.shape)} and negatives {tuple(y_neg.shape)} must have the same shape")
    logits = net(torch.cat([y_pos, y_neg.detach()]), t.repeat(2))  # one forward for both: (2B, K)
    if net.config.num_classes is None:
        if labels is not None and bool((labels >= 0).any()):
            raise ValueError("this energy network is unconditional: it takes no class label")
        both = logits.squeeze(1)
    else:
        both = jem_energy(logits, None if labels is None else labels.repeat(2))
    e_pos, e_neg = both.chunk(2)
    loss = (weight * (e_pos - e_neg)).mean()
    ce = torch.zeros((), device=y_pos.device)
    if ce_weight > 0 and classes is not None and net.config.num_classes is not None:
        ce = F.cross_entropy(logits[: y_pos.shape[0]], classes)
        loss = loss + ce_weight * ce
    return RecoveryTerms(loss, e_pos.mean().item(), e_neg.mean().item(), ce.item())
