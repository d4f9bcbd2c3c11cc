"""The bytes of a request that were versioned are the bytes resolved and unlearned."""

from __future__ import annotations

import json

from components.config import Config
from components.context import run_context
from components.paths import Paths
from pipeline_repo import make_flow_repo, request_json, tiny_subjects

TINY_WORLD = {"world.n_subjects": 6, "world.n_holdout_subjects": 2, "world.facts_per_subject": 8,
              "model.tokenizer.vocab_size": 400}


def test_prepare_resolves_the_given_bytes_not_the_file_on_disk(tmp_path):
    from components.stages import prepare

    subjects = tiny_subjects()
    on_disk = tmp_path / "request.json"
    on_disk.write_text(request_json("req-1", [subjects[0]]))
    versioned = request_json("req-1", [subjects[1]]).encode()
    config = Config().with_overrides(TINY_WORLD)

    resolution = prepare(config, Paths(tmp_path), request_data=[versioned])

    assert {record.subject for record in resolution.forget} == {subjects[1]}
    assert (tmp_path / "data" / "prepared" / "requests" / "req-1.json").read_bytes() == versioned


def test_a_request_changed_after_it_was_versioned_is_rejected_and_kept(tmp_path):
    from components.data import versioning
    from components.data.inbox import Inbox
    from flows.pipeline import Batch, _pin

    repo = make_flow_repo(tmp_path / "repo")
    paths = Paths(repo)
    inbox = Inbox(paths)
    request = inbox.paths.inbox / "changed.json"
    request.write_text(request_json("req-changed", [tiny_subjects()[0]]))
    valid, _ = inbox.take()
    batch = Batch(run_context(Config(), paths))
    batch.hashes = versioning.track(repo, [request])
    request.write_text(request_json("req-changed", [tiny_subjects()[1]]))  # edited after `dvc add`

    assert _pin(batch, inbox, valid) == []
    assert batch.summary["rejected"] == ["req-changed"]
    kept = list((repo / "data" / "requests" / "rejected").glob("*.json"))
    assert [json.loads(p.read_text())["request_id"] for p in kept] == ["req-changed"]
