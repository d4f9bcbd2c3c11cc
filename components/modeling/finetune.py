"""Fine-tune a causal LM on records until it has memorised them (or a fixed epoch count).

Worlds differ a lot in answer length, so the target is trained until its mean answer
probability reaches ``finetune.target_prob`` (or ``finetune.max_epochs``); the oracle is
then trained with the same recipe for the same number of epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from components.config import FinetuneConfig
from components.data.records import Record
from components.modeling.encoding import Encoded, collate, encode_record, ensure_pad_token
from components.modeling.scoring import mean_token_nll, token_scores
from components.progress import progress_bar


@dataclass
class FinetuneResult:
    epochs: int
    mean_answer_prob: float
    stop_reason: str
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "mean_answer_prob": self.mean_answer_prob,
            "stop_reason": self.stop_reason,
        }


def mean_answer_prob(model, encoded: Sequence[Encoded], pad_token_id: int, batch_size: int = 64) -> float:
    """Mean over examples of exp(-mean target-token NLL)."""
    nll = mean_token_nll(model, list(encoded), pad_token_id, batch_size)
    return float(torch.exp(-nll).mean()) if len(nll) else math.nan


def finetune(
    model,
    tokenizer,
    records: Sequence[Record],
    config: FinetuneConfig,
    *,
    max_length: int,
    seed: int,
    epochs: int | None = None,
    show_progress: bool = True,
    label: str = "fine-tune",
    fused: bool = False,
    measure: bool = True,
) -> FinetuneResult:
    """Train ``model`` in place on ``records``.

    With ``epochs`` set, train exactly that many epochs; otherwise stop once the mean
    answer probability reaches ``config.target_prob`` (checked every ``check_every``
    epochs) or at ``config.max_epochs``. ``fused``: AdamW's fused kernel (the same update up
    to rounding, several times cheaper per step on CPU). ``measure=False`` skips the final
    mean answer probability of a fixed-epoch run (``nan`` in the result) for callers that do
    not read it.
    """
    if not records:
        raise ValueError("cannot fine-tune on an empty set of records")
    encoded = [encode_record(tokenizer, record, max_length) for record in records]
    pad = ensure_pad_token(tokenizer)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=fused or None)
    generator = torch.Generator().manual_seed(seed)
    limit = epochs if epochs is not None else config.max_epochs
    history: list[dict] = []
    prob, reason = math.nan, "max_epochs" if epochs is None else "fixed_epochs"

    with progress_bar(enabled=show_progress, status=True) as progress:
        task = progress.add_task(label, total=limit, status="")
        epoch = 0
        for epoch in range(1, limit + 1):
            model.train()
            total = 0.0
            order = torch.randperm(len(encoded), generator=generator).tolist()
            for start in range(0, len(order), config.batch_size):
                batch = collate([encoded[i] for i in order[start : start + config.batch_size]], pad)
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = token_scores(model, batch).mean_nll.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                total += float(loss.detach()) * len(batch["input_ids"])
            entry = {"epoch": epoch, "loss": total / len(encoded)}
            check = epochs is None and (epoch % config.check_every == 0 or epoch == limit)
            if check and epoch >= config.min_epochs:
                prob = mean_answer_prob(model, encoded, pad)
                entry["mean_answer_prob"] = prob
            history.append(entry)
            status = f"loss {entry['loss']:.3f}" + (f"  p(answer) {prob:.3f}" if not math.isnan(prob) else "")
            progress.update(task, advance=1, status=status)
            if check and prob >= config.target_prob:
                reason = "target_prob"
                break
    if measure and (epochs is not None or math.isnan(prob)):
        prob = mean_answer_prob(model, encoded, pad)
    model.eval()
    return FinetuneResult(epochs=epoch, mean_answer_prob=prob, stop_reason=reason, history=history)
