r"""A TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

``z = TopK(ReLU(W_enc (x - b_pre) + b_enc))``, ``x_hat = z W_dec + b_pre``: ``K`` latents of which
at most ``k`` are non-zero per row; the decoder rows (the concept directions) have unit norm
(renormalised after every step, the gradient's component along each row removed before it).
Trained with Adam on mean squared error plus the AuxK loss against dead latents: latents that
have not fired on the last ``dead_after`` rows reconstruct the residual with their own top
``k_aux``, weighted ``aux_weight`` (1/32 in the paper). The decoder starts on centred rows of the
first batch chosen far apart (greedy farthest-point in cosine) (random unit rows where it has too few), the encoder as its transpose,
``b_pre`` at the first batch's coordinate-wise median.

Inputs are scaled by one number (the first batch's root mean squared norm around the median) so
that the learning rate fits every layer; :meth:`TopKSAE.concepts` folds the scale back, so
the saved encoder takes raw activations.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

__all__ = ["TopKSAE"]


def _spread(units: Tensor, n: int) -> Tensor:
    r"""Indices of up to ``n`` rows of ``units`` (unit vectors) chosen greedily far apart: each
    next row is the one whose largest cosine to the rows chosen so far is smallest."""
    m = units.shape[0]
    if m == 0 or n <= 0:
        return torch.zeros(0, dtype=torch.long, device=units.device)
    n = min(n, m)
    chosen = [0]
    closest = units @ units[0]
    for _ in range(n - 1):
        nxt = int(closest.argmin())
        chosen.append(nxt)
        closest = torch.maximum(closest, units @ units[nxt])
    return torch.tensor(chosen, dtype=torch.long, device=units.device)


class TopKSAE(nn.Module):
    r"""A TopK sparse autoencoder over ``C``-dimensional rows.

    Args:
        channels (int): ``C``.
        n_latents (int): ``K``, the number of concepts.
        k (int): active latents per row.
        seed (int): seed of the initial decoder.
        lr (float): Adam's learning rate.
        k_aux (int, optional): latents of the AuxK loss (default ``max(2 * k, C // 2)``, the
            paper's ``C / 2``, capped at ``K``).
        aux_weight (float): weight of the AuxK loss.
        dead_after (int): rows without firing after which a latent counts as dead.

    Example::

        >>> sae = TopKSAE(160, 64, k=8)
        >>> for rows in stream: sae.step(rows)
        >>> concepts = sae.concepts("features.14")
    """

    def __init__(self, channels: int, n_latents: int, k: int, *, seed: int = 0, lr: float = 1e-3,
                 k_aux: Optional[int] = None, aux_weight: float = 1 / 32, dead_after: int = 100_000) -> None:
        super().__init__()
        if not 1 <= int(k) <= int(n_latents):
            raise ValueError(f"k must be in [1, n_latents={n_latents}], got {k}.")
        g = torch.Generator().manual_seed(int(seed))
        dec = torch.nn.functional.normalize(torch.randn(n_latents, channels, generator=g), dim=1)
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_pre = nn.Parameter(torch.zeros(channels))
        self.k = int(k)
        self.k_aux = int(min(n_latents, k_aux if k_aux is not None else max(2 * k, channels // 2)))
        self.aux_weight = float(aux_weight)
        self.dead_after = int(dead_after)
        self.register_buffer("since_fired", torch.zeros(n_latents, dtype=torch.long))
        self.register_buffer("scale", torch.zeros(()))
        self.lr = float(lr)
        self.seed = int(seed)
        self._opt: Optional[torch.optim.Optimizer] = None
        self.steps = 0

    def encode_scaled(self, x: Tensor) -> Tensor:
        pre = torch.relu((x - self.b_pre) @ self.W_enc.T + self.b_enc)
        top = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter(1, top.indices, top.values)

    def forward(self, x: Tensor) -> Tensor:
        r"""Reconstruction of raw ``(M, C)`` rows (after :meth:`step` set the scale)."""
        s = self.scale.clamp_min(1e-12)
        z = self.encode_scaled(x / s)
        return (z @ self.W_dec + self.b_pre) * s

    def _start(self, x: Tensor) -> None:
        with torch.no_grad():
            mean = x.median(0).values  # (coordinate-wise; Gao et al. use the geometric median)
            rms = (x - mean).pow(2).sum(1).mean().sqrt()
            self.scale.fill_(float(rms) if float(rms) > 0 else 1.0)
            self.b_pre.copy_(mean / self.scale)
            # start the decoder on centred rows of the first batch (random rows where too few)
            centred = x - mean
            live = torch.nonzero(centred.norm(dim=1) > 1e-6 * float(rms)).reshape(-1)
            g = torch.Generator().manual_seed(self.seed)
            live = live[torch.randperm(live.numel(), generator=g)[:8192].to(live.device)]
            pick = _spread(torch.nn.functional.normalize(centred[live], dim=1), self.W_dec.shape[0])
            pick = live[pick]
            if pick.numel():
                rows = torch.nn.functional.normalize(centred[pick], dim=1)
                self.W_dec[:pick.numel()] = rows
                self.W_enc[:pick.numel()] = rows
        self._opt = torch.optim.Adam(self.parameters(), lr=self.lr)

    def step(self, rows: Tensor) -> Dict[str, float]:
        r"""One Adam step on ``(M, C)`` raw rows; returns the batch's losses (normalised MSE:
        the residual's energy over the batch's variance, 1 - R^2)."""
        x = rows.detach().to(self.W_dec.device, torch.float32)
        if self._opt is None:
            self._start(x)
        x = x / self.scale
        pre = torch.relu((x - self.b_pre) @ self.W_enc.T + self.b_enc)
        top = pre.topk(self.k, dim=1)
        z = torch.zeros_like(pre).scatter(1, top.indices, top.values)
        x_hat = z @ self.W_dec + self.b_pre
        var = (x - x.mean(0)).pow(2).sum(1).mean().clamp_min(1e-12)
        mse = (x - x_hat).pow(2).sum(1).mean()
        loss = mse / var
        fired = (z > 0).any(0)
        self.since_fired += x.shape[0]
        self.since_fired[fired] = 0
        dead = self.since_fired >= self.dead_after
        aux = torch.zeros((), device=x.device)
        if dead.any() and self.aux_weight > 0:
            residual = (x - x_hat).detach()
            masked = pre.masked_fill(~dead, 0.0)
            ka = int(min(self.k_aux, int(dead.sum())))
            atop = masked.topk(ka, dim=1)
            za = torch.zeros_like(pre).scatter(1, atop.indices, atop.values)
            aux = (residual - za @ self.W_dec).pow(2).sum(1).mean() / residual.pow(2).sum(1).mean().clamp_min(1e-12)
            loss = loss + self.aux_weight * aux
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            w, g = self.W_dec, self.W_dec.grad
            if g is not None:  # keep the decoder rows on the unit sphere: drop the radial part
                g -= (g * w).sum(1, keepdim=True) * w
        self._opt.step()
        with torch.no_grad():
            self.W_dec.copy_(torch.nn.functional.normalize(self.W_dec, dim=1))
        self.steps += 1
        return {"nmse": float(mse.detach() / var), "aux": float(aux.detach()), "dead": int(dead.sum())}

    def concepts(self, layer: str, name: Optional[str] = None, extra: Optional[Dict[str, Any]] = None):
        r"""The trained autoencoder as :class:`~captum_topk.concepts.base.Concepts` (method
        ``"sae"``) taking raw activations: the input scale folded into the biases."""
        from .base import Concepts

        s = float(self.scale) if float(self.scale) > 0 else 1.0
        state = {"W_enc": self.W_enc.detach().cpu(), "b_enc": self.b_enc.detach().cpu() * s,
                 "b_pre": self.b_pre.detach().cpu() * s, "k": self.k, "steps": self.steps,
                 **(extra or {})}
        return Concepts(layer, self.W_dec.detach().cpu(), "sae", name=name, encoder_state=state)
