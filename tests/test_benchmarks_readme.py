"""The benchmarks README's generated blocks match the results files they are written from."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import readme


def test_every_generated_block_of_the_readme_matches_its_results():
    text = readme.README.read_text(encoding="utf-8")
    assert readme.rendered(text) == text, "stale: run `python -m benchmarks.readme`"


def test_a_changed_result_changes_the_block_and_a_missing_marker_is_an_error(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for stem in ("eval_reuse", "eval_reuse_demo"):
        shutil.copyfile(readme.RESULTS / f"{stem}.json", results / f"{stem}.json")
    data = json.loads((results / "eval_reuse.json").read_text())
    data["runs"][0]["evaluate"]["floor"]["ratio"] = 9.87
    (results / "eval_reuse.json").write_text(json.dumps(data))
    text = readme.README.read_text(encoding="utf-8")
    changed = readme.rendered(text, results)
    assert "| 9.87 |" in changed and "| 9.87 |" not in text
    with pytest.raises(ValueError, match="no block 'floors'"):
        readme.rendered(text.replace("<!-- generated: floors -->", ""), results)
