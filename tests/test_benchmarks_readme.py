"""The benchmarks README's generated blocks match the results files they are written from."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from benchmarks import readme


def _copy_results(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for path in readme.RESULTS.glob("*.json"):
        shutil.copyfile(path, results / path.name)
    return results


def test_every_generated_block_of_the_readme_matches_its_results():
    text = readme.README.read_text(encoding="utf-8")
    assert readme.rendered(text) == text, "stale: run `python -m benchmarks.readme`"


def test_a_changed_result_changes_the_block_and_a_missing_marker_is_an_error(tmp_path):
    results = _copy_results(tmp_path)
    data = json.loads((results / "eval_reuse.json").read_text())
    data["runs"][0]["evaluate"]["floor"]["ratio"] = 9.87
    (results / "eval_reuse.json").write_text(json.dumps(data))
    text = readme.README.read_text(encoding="utf-8")
    changed = readme.rendered(text, results)
    assert "| 9.87 |" in changed and "| 9.87 |" not in text
    with pytest.raises(ValueError, match="no block 'floors'"):
        readme.rendered(text.replace("<!-- generated: floors -->", ""), results)


def test_a_study_block_follows_its_json_and_a_missing_results_file_is_an_error(tmp_path):
    results = _copy_results(tmp_path)
    data = json.loads((results / "scaling.json").read_text())
    data["by_model_size"][1]["eval_seconds_one_model"] = 98.76
    (results / "scaling.json").write_text(json.dumps(data))
    assert "| 98.8 |" in readme.scaling(results)
    (results / "step_cost.json").unlink()
    with pytest.raises(FileNotFoundError):
        readme.step_cost(results)


def test_the_readme_has_no_table_outside_a_generated_block():
    """Tables come from results files: every Markdown table row sits between generated markers."""
    text = readme.README.read_text(encoding="utf-8")
    outside = re.sub(r"<!-- generated: (\w+) -->\n.*?<!-- /generated: \1 -->", "", text, flags=re.DOTALL)
    rows = [line for line in outside.splitlines() if line.lstrip().startswith("|")]
    assert not rows, f"hand-typed table rows in {readme.README}: {rows[:3]}"


def test_the_comparison_reads_utility_at_a_matched_level_and_applies_the_2_sd_rule():
    from benchmarks.compare import analyse, at_level, helps, verdict

    points = [{"forget_prob": 0.9, "retain_nll": 1.0}, {"forget_prob": 0.5, "retain_nll": 1.4},
              {"forget_prob": 0.1, "retain_nll": 2.2}]
    assert at_level(points, 0.3) == pytest.approx(1.8)  # halfway between the 2nd and 3rd points
    assert at_level(points, 0.05) is None  # never reached
    assert verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])["verdict"] == "win"  # lower retain NLL by 10 SDs
    assert verdict([1.0, 1.5, 0.5], [1.2, 1.7, 0.7])["verdict"] == "tie"
    assert verdict([2.0, 2.1, 1.9], [1.0, 1.1, 0.9])["verdict"] == "loss"
    assert verdict([1.0, None, 1.0], [1.0, 1.0, 1.0])["verdict"].startswith("not reached")
    assert verdict([1.0], [2.0])["verdict"].startswith("incomplete")  # a report written while seeds still run
    assert verdict([0.5, 0.6, 0.4], [0.2, 0.3, 0.1], lower_is_better=False)["verdict"] == "win"  # world facts
    rows = [{"world": "w", "optimizer": "adamw", "pair": "blur vs weighted_sum", "g": g, "q": q, "verdict": v,
             "measure": "retain_nll"} for g, q, v in ((0.03, 0.8, "win"), (0.1, 0.8, "win"), (0.3, 0.8, "tie"),
                                                      (0.1, 0.5, "tie"))]
    assert helps(rows, "w")["helps"] is True
    assert helps(rows + [{**rows[0], "q": 1.0, "verdict": "loss"}], "w")["helps"] is False
    # "helps" is read on retain NLL only (protocols/comparison.md): a world-facts verdict does not change it
    assert helps(rows + [{**rows[0], "measure": "facts_option_prob", "verdict": "loss"}], "w")["helps"] is True
    # a world without world facts (the demo) is judged on retain NLL alone; one with them on both measures
    run = {"world": "w", "arm": {"name": "blur", "g": 0.1, "gamma": 0.1, "optimizer": "adamw", "lr": None}, "seed": 0,
           "points": points}
    demo = analyse([run, {**run, "arm": {**run["arm"], "name": "weighted_sum"}}],
                   {"w": {"target": {"forget_prob": 0.9, "retain_nll": 1.0}, "oracle": {"forget_prob": 0.1}}})
    assert {r["measure"] for r in demo} == {"retain_nll"} and len(demo) == 3
    facts = [{**point, "facts_option_prob": 0.3} for point in points]
    both = analyse([{**run, "points": facts}, {**run, "points": facts, "arm": {**run["arm"], "name": "weighted_sum"}}],
                   {"w": {"target": {"forget_prob": 0.9, "retain_nll": 1.0, "facts_option_prob": 0.3},
                          "oracle": {"forget_prob": 0.1}}})
    assert sorted({r["measure"] for r in both}) == ["facts_option_prob", "retain_nll"] and len(both) == 6
    # a world with one g (SmolLM2's cut grid): two wins of its three levels
    one_g = [{**rows[0], "g": 0.1, "q": q, "verdict": v} for q, v in ((0.5, "win"), (0.8, "tie"), (1.0, "win"))]
    assert helps(one_g, "w")["helps"] is True and helps(one_g[:2], "w")["helps"] is False
    # a partial world (--cached-only) is not answered yet: "open", not "no"
    partial = [{**row, "verdict": "incomplete (2 of 3 seeds so far)"} for row in one_g]
    assert helps(partial, "w")["helps"] == "open" and helps([], "w")["helps"] == "open"


def test_the_comparison_reports_what_is_cached_and_writes_whole_files(monkeypatch, tmp_path):
    from benchmarks import compare, harness

    # a run that cuts the seeds to one gets "incomplete", not a pooled SD of one value (statistics' error)
    monkeypatch.setattr(compare, "SEEDS", (0,))
    assert compare.verdict([1.0], [2.0])["verdict"].startswith("incomplete")
    # the weighted sum at BLUR's mean xi: read from the cached blur run; --cached-only before it skips the arm
    blur = {"world": "w", "arm": {"name": "blur", "g": 0.1, "optimizer": "adamw"}, "seed": 0, "mean_xi": 0.1234567}
    assert compare._xi([blur], "w", 0.1, 0) == 0.123457
    assert compare._xi([], "w", 0.1, 0, cached_only=True) is None
    with pytest.raises(RuntimeError, match="no blur run"):
        compare._xi([{**blur, "mean_xi": None}], "w", 0.1, 0)
    # results files are replaced whole: no partial file is left beside them
    harness.write_json(tmp_path / "r.json", {"a": 1})
    assert harness.read_json(harness.write_json(tmp_path / "r.json", {"a": 2})) == {"a": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]


def _renderer(stem: str):
    """The study function that writes ``results/<stem>.md`` from ``results/<stem>.json``."""
    from benchmarks import (calibration, compare, eval_reuse, holdout_exchangeability, noise_floor, scaling,
                            step_cost, utility_noise)

    if stem == "eval_reuse_flow":
        return eval_reuse.render_flow
    for module in (calibration, compare, eval_reuse, holdout_exchangeability, noise_floor, scaling, step_cost,
                   utility_noise):
        if stem.startswith(module.__name__.rsplit(".", 1)[1]):
            return module.renderer(stem) if hasattr(module, "renderer") else module.render
    raise LookupError(f"no study renders {stem}.md")


@pytest.mark.parametrize("stem", sorted(p.stem for p in readme.RESULTS.glob("*.md")
                                        if p.with_suffix(".json").exists()))
def test_every_results_write_up_is_rendered_from_its_json_alone(stem):
    data = json.loads((readme.RESULTS / f"{stem}.json").read_text(encoding="utf-8"))
    assert _renderer(stem)(data) == (readme.RESULTS / f"{stem}.md").read_text(encoding="utf-8")
