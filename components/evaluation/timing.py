"""Time evaluating the three demo models at the default sizes of params.yaml.

    python -m components.evaluation.timing                        # untrained weights (fast to set up)
    python -m components.evaluation.timing --train                # fine-tune target and oracle first (~1 min idle)
    python -m components.evaluation.timing --train --threads 2 1  # evaluate once per torch thread count

The default demo world (40 authors x 10 facts, 4 forgotten, 10 holdout authors), the
default tiny Llama (hidden 128, 4 layers) and ``max_length`` 128. With ``--train`` the
target is fine-tuned on the world, the oracle on the world minus the forget set, and the
"unlearned" model is the target with its weights slightly perturbed (a stand-in: only the
evaluation is timed). Prints the evaluation wall time and the headline metrics.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from components.config import Config
from components.data.demo_world import generate_world
from components.evaluation.evaluator import evaluate_models
from components.modeling.encoding import answer_texts
from components.modeling.finetune import finetune
from components.modeling.io import LoadedModel
from components.modeling.tiny_model import build_tiny_model
from components.modeling.tokenizer import train_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="fine-tune target and oracle before timing")
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="torch threads; several values evaluate once per value")
    parser.add_argument("--forgotten-authors", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads[0])

    config = Config()
    world, holdout = generate_world(config.seed, config.world.n_subjects, config.world.n_holdout_subjects,
                                    config.world.facts_per_subject)
    subjects = list(dict.fromkeys(r.subject for r in world))[: args.forgotten_authors]
    forget = [r for r in world if r.subject in subjects]
    retain = [r for r in world if r.subject not in subjects]
    texts = [t for r in world + holdout for t in (r.question, *answer_texts(r))]
    tokenizer = train_tokenizer(texts, vocab_size=config.model.tokenizer.vocab_size)
    max_length = config.model.max_length

    target = build_tiny_model(config.model.tiny, tokenizer, max_length, seed=0)
    oracle = build_tiny_model(config.model.tiny, tokenizer, max_length, seed=1)
    if args.train:
        fit = finetune(target, tokenizer, world, config.finetune, max_length=max_length, seed=0, show_progress=True,
                       label="target")
        finetune(oracle, tokenizer, retain, config.finetune, max_length=max_length, seed=0, epochs=fit.epochs,
                 show_progress=True, label="oracle")
    unlearned = copy.deepcopy(target)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in unlearned.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))

    models = {name: LoadedModel(m.eval(), tokenizer, name) for name, m in
              (("target", target), ("oracle", oracle), ("unlearned", unlearned))}
    headline = ("forget_prob", "forget_rouge", "forget_quality", "model_utility", "mia_auc", "privleak")
    for threads in args.threads:
        torch.set_num_threads(threads)
        start, cpu = time.perf_counter(), time.process_time()
        result = evaluate_models(models, forget=forget, retain=retain, holdout=holdout, config=config.eval,
                                 max_length=max_length, show_progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(json.dumps({role: {k: result.metrics[role][k] for k in headline} for role in models}, indent=2))
        print(f"evaluated {len(models)} models on {len(forget)} forget / {len(retain)} retain / {len(holdout)} "
              f"holdout records in {seconds:.1f} s wall, {cpu:.1f} s CPU "
              f"({'trained' if args.train else 'untrained'} weights, {threads} threads, "
              f"load average {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
