"""What the denoiser is conditioned on: a prompt's tensors, which Imagic optimizes and interpolates alike.

Every family has the per-token text embeddings ``embeds`` ``[batch, tokens, dim]``; SDXL adds the
pooled embedding ``pooled`` ``[batch, dim]``. What the denoiser takes besides (SDXL's size
conditioning) is its family's business (:mod:`imagic_lora.families`). The operations here act on
whichever tensors a condition holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch


@dataclass
class Condition:
    """One prompt's conditioning; Imagic optimizes and interpolates every tensor of it alike."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    def parts(self) -> dict[str, torch.Tensor]:
        """The tensors this condition holds, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Condition:
        """``fn`` applied to every tensor."""
        return Condition(**{name: fn(tensor) for name, tensor in self.parts().items()})

    def tensors(self) -> list[torch.Tensor]:
        return list(self.parts().values())

    def expand(self, batch: int) -> Condition:
        """The same condition for ``batch`` samples (views, no copies)."""
        return self.map(lambda tensor: tensor.expand(batch, *tensor.shape[1:]))

    def trainable(self) -> Condition:
        """An fp32 copy whose tensors take gradients, for stage 1."""
        return self.map(lambda tensor: tensor.detach().clone().float().requires_grad_(True))

    def detach(self) -> Condition:
        return self.map(torch.Tensor.detach)


def interpolate(e_new: Condition, e_opt: Condition, alpha: float) -> Condition:
    """Imagic step C: ``α·e_new + (1−α)·e_opt``, for every tensor the two conditions share."""
    new = e_new.parts()
    return Condition(**{name: alpha * new[name] + (1 - alpha) * tensor
                        for name, tensor in e_opt.parts().items() if name in new})


def concat(conditions: Sequence[Condition]) -> Condition:
    """Conditions stacked along the batch dimension (the tensors all of them hold)."""
    parts = [condition.parts() for condition in conditions]
    shared = [name for name in parts[0] if all(name in part for part in parts)]
    return Condition(**{name: torch.cat([part[name] for part in parts]) for name in shared})
