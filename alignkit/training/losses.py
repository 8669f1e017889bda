"""Token-level losses shared by every objective. Pure functions of tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from alignkit.data.chat import IGNORE


def token_nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over target positions of -log p(target); positions with IGNORE contribute nothing.

    Summing (not averaging) lets the training loop divide by the number of target tokens in the
    whole accumulated batch, so gradient accumulation equals one large batch.
    """
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position (0 where the target is IGNORE); same shape as targets."""
    safe = targets.clamp(min=0)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * (targets != IGNORE)
