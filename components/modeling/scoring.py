"""Teacher-forced log-probabilities of target tokens: the primitive every loss and metric uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from components.chunks import batched
from components.modeling.encoding import IGNORE_INDEX


@dataclass
class TokenScores:
    """Per-token log-probabilities of the labelled tokens of a batch.

    ``token_logps`` is (batch, seq-1) with zeros where ``mask`` is False, always in fp32 (the
    logits are cast before ``log_softmax``, so bf16/fp16 weights lose no precision in losses
    and metrics); ``logits`` stay in the weights' dtype.
    """

    token_logps: torch.Tensor
    mask: torch.Tensor
    logits: torch.Tensor

    @property
    def n_tokens(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    @property
    def sum_logp(self) -> torch.Tensor:
        return self.token_logps.sum(dim=1)

    @property
    def mean_nll(self) -> torch.Tensor:
        """Mean negative log-likelihood per example over its target tokens."""
        return -self.sum_logp / self.n_tokens.clamp(min=1)

    def mink_nll(self, k: float) -> torch.Tensor:
        """Mean NLL per example over its ``ceil(k * n)`` least likely target tokens (min-k%, Shi et al.
        2024): the tokens a model that never saw the example finds surprising, such as a fact's value."""
        nll = (-self.token_logps).masked_fill(~self.mask, float("-inf"))
        ranked = nll.sort(dim=1, descending=True).values
        keep = torch.ceil(self.n_tokens.to(torch.float32) * k).clamp(min=1).to(self.n_tokens.dtype)
        chosen = torch.arange(ranked.shape[1], device=ranked.device).unsqueeze(0) < keep.unsqueeze(1)
        return torch.where(chosen, ranked, torch.zeros_like(ranked)).sum(dim=1) / keep

    def record_nll(self, mink_k: float | None = None) -> torch.Tensor:
        """:attr:`mean_nll`, or :meth:`mink_nll` when ``mink_k`` is given."""
        return self.mean_nll if mink_k is None else self.mink_nll(mink_k)


def token_scores(model, batch: dict[str, torch.Tensor]) -> TokenScores:
    """Run the model on a right-padded batch and score its labelled tokens."""
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = outputs.logits[:, :-1, :]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    logps = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return TokenScores(token_logps=logps * mask, mask=mask, logits=logits)


def scored_batches(model, encoded: list, pad_token_id: int, batch_size: int, device: torch.device):
    """:func:`token_scores` of consecutive batches of ``encoded``, collated onto ``device``."""
    from components.modeling.encoding import collate

    for chunk in batched(encoded, batch_size):
        yield token_scores(model, {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()})


@torch.no_grad()
def mean_token_nll(model, encoded: list, pad_token_id: int, batch_size: int = 64,
                   mink_k: float | None = None) -> torch.Tensor:
    """Mean target-token NLL of each encoded example (a 1-D float tensor); over its least likely
    ``mink_k`` fraction of tokens when given (:meth:`TokenScores.mink_nll`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [scores.record_nll(mink_k).cpu()
           for scores in scored_batches(model, encoded, pad_token_id, batch_size, device)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
