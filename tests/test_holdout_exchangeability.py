"""benchmarks/holdout_exchangeability.py: its verdict, its chance baseline and its report, without training."""

from __future__ import annotations

import json
import random

from benchmarks import harness
from benchmarks import holdout_exchangeability as hx
from components.data.records import QARecord


def _records(subjects: int, facts: int, tag: str) -> list[QARecord]:
    return [QARecord(question=f"q{tag}{s}-{f}", answer=f"a{f}", subject=f"{tag}{s}")
            for s in range(subjects) for f in range(facts)]


def test_the_chance_baseline_places_an_unlike_forget_set_at_the_edge_and_a_like_one_inside():
    forget, holdout = _records(4, 5, "f"), _records(10, 5, "h")

    def rows(shift: float):
        rng = random.Random(1)
        score = lambda: {"mia_mink": -rng.random(), "prob": rng.random()}  # noqa: E731
        return {"forget": [score() | {"mia_mink": score()["mia_mink"] - shift} for _ in forget],
                "holdout": [score() for _ in holdout]}

    unlike = hx.subject_permutation_null(forget, holdout, rows(5.0), seed=0, draws=300)
    assert unlike["observed_auc_percentile"] < 0.01 and unlike["draws"] == 300
    like = hx.subject_permutation_null(forget, holdout, rows(0.0), seed=0, draws=300)
    assert 0.05 < like["observed_auc_percentile"] < 0.95
    assert like["auc_5_95"][0] <= 0.5 <= like["auc_5_95"][1]


def test_verdict_and_report_come_from_the_json(tmp_path):
    row = {"seed": 0, "n_forget": 40, "n_forget_subjects": 4, "n_holdout": 100, "n_holdout_subjects": 10,
           "finetune_epochs": 25, "oracle_forget_prob": 0.4, "oracle_holdout_prob": 0.44, "prob_ratio": 1.1,
           "forget_holdout_auc": 0.47, "mia_auc_loss": 0.46, "mia_auc_zlib": 0.48, "forget_holdout_ks_p": 0.3,
           "null": {"draws": 10, "auc_5_95": [0.43, 0.57], "observed_auc_percentile": 0.3},
           "train_seconds": 90.0, "seconds": 95.0}
    row["pass"] = hx.verdict(row)
    assert row["pass"] == {"auc_in_band": True, "prob_ratio_ok": True, "forget_size_ok": True}
    assert not hx.verdict(row | {"forget_holdout_auc": 0.24})["auc_in_band"]
    assert not hx.verdict(row | {"prob_ratio": 11.0})["prob_ratio_ok"]
    assert not hx.verdict(row | {"n_forget": 8})["forget_size_ok"]
    results = {"criteria": {"auc_band": [0.4, 0.6], "max_prob_ratio": 1.25, "min_forget_records": 40},
               "world": {"n_subjects": 40, "n_holdout_subjects": 10, "facts_per_subject": 10},
               "request": "data/requests/demo-request.json", "seeds": [row], "all_pass": True,
               "machine": {"cpu": "cpu", "cores": 2, "torch": "x", "torch_threads": 1}}
    (tmp_path / f"{hx.STEM}.json").write_text(json.dumps(results))
    harness.invoke(hx.app, ["--report-only", "--out", str(tmp_path)])
    text = (tmp_path / f"{hx.STEM}.md").read_text()
    assert "| 0 | 40 (4) | 100 (10) | 25 | 0.400 | 0.440 | 1.10 | 0.470 |" in text
    assert "All seeds meet the criteria." in text
