"""The `blur` command line: hand in requests, process them, read status and reports."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline_repo import make_flow_repo, request_json, tiny_subjects

runner = CliRunner()


@pytest.fixture(scope="module")
def cli_repo(tmp_path_factory, prefect_server, migrated_mlflow_db, seed_target):
    """A flow repository where a request was added and processed through the CLI."""
    repo = make_flow_repo(tmp_path_factory.mktemp("cli") / "repo", mlflow_db=migrated_mlflow_db)
    seed_target(repo)
    outside = repo.parent / "incoming"
    outside.mkdir()
    (outside / "good.json").write_text(request_json("cli-good", [tiny_subjects()[2]]))
    (outside / "bad.json").write_text(request_json("cli bad", ["Nobody"]))
    results = {
        "add_good": runner.invoke(app, ["request", "add", str(outside / "good.json"), "--root", str(repo)]),
        "add_bad": runner.invoke(app, ["request", "add", str(outside / "bad.json"), "--root", str(repo)]),
        "status_before": runner.invoke(app, ["status", "--root", str(repo)]),
    }
    results["process"] = runner.invoke(app, ["process", "--root", str(repo)])
    results["process_again"] = runner.invoke(app, ["process", "--root", str(repo)])
    results["status_after"] = runner.invoke(app, ["status", "--root", str(repo)])
    results["report"] = runner.invoke(app, ["report", "--root", str(repo)])
    return repo, outside, results


def test_request_add_puts_a_valid_request_into_the_inbox(cli_repo):
    repo, outside, results = cli_repo
    assert results["add_good"].exit_code == 0, results["add_good"].output
    assert "Accepted" in results["add_good"].output
    assert (outside / "good.json").exists(), "the original file is left where it was"


def test_request_add_refuses_an_invalid_request_with_the_reason(cli_repo):
    repo, outside, results = cli_repo
    assert results["add_bad"].exit_code == 1
    assert "request_id" in results["add_bad"].output and "letters, digits" in results["add_bad"].output
    assert (outside / "bad.json").exists()
    assert not (repo / "data" / "requests" / "inbox" / "bad.json").exists()


def test_status_lists_pending_requests(cli_repo):
    output = cli_repo[2]["status_before"].output
    assert "pending" in output and "cli-good" in output and "cli-good.json" not in output  # by id, not file name
    assert "No champion yet" in output


def test_process_runs_the_flow_and_promotes(cli_repo):
    repo, _, results = cli_repo
    assert results["process"].exit_code == 0, results["process"].output
    assert "cli-good" in results["process"].output and "passed" in results["process"].output
    assert (repo / "data" / "requests" / "processed" / "cli-good.result.json").exists()


def test_process_twice_processes_nothing_new(cli_repo):
    output = cli_repo[2]["process_again"].output
    assert cli_repo[2]["process_again"].exit_code == 0
    assert "Batch (none)" in output


def test_status_shows_the_champion(cli_repo):
    output = cli_repo[2]["status_after"].output
    assert "Champion: blur-demo version 1" in output
    # the batch scored its target, oracle and unlearned model into the project's evaluation cache
    assert re.search(r"Evaluation cache: [1-9]\d* model\(s\)", output)
    assert "processed" in output and "cli-good" in output


def test_report_shows_the_latest_run(cli_repo):
    result = cli_repo[2]["report"]
    assert result.exit_code == 0, result.output
    assert "cli-good" in result.output


def test_request_retry_moves_a_failed_request_back(tmp_path):
    from components.data.inbox import Inbox
    from components.paths import Paths

    inbox = Inbox(Paths(tmp_path))
    (inbox.failed / "r-1.json").write_text(request_json("r-1", ["x"]))
    (inbox.failed / "r-1.reason.txt").write_text("failed: gate")
    result = runner.invoke(app, ["request", "retry", "r-1", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "requests" / "inbox" / "r-1.json").exists()
    assert runner.invoke(app, ["request", "retry", "r-1", "--root", str(tmp_path)]).exit_code == 1


def test_request_add_never_replaces_a_waiting_file(tmp_path):
    """What `blur request add` does after its checks: an unreadable file with the same name is kept."""
    from components.data.inbox import Inbox
    from components.data.requests import RequestError
    from components.paths import Paths

    inbox = Inbox(Paths(tmp_path))
    waiting = tmp_path / "data" / "requests" / "inbox" / "r-9.json"
    waiting.write_text("{not json, but waiting for the next batch to reject it")
    new = tmp_path / "r-9.json"
    new.write_text(request_json("r-9", ["x"]))
    with pytest.raises(RequestError, match="already has a file r-9.json"):
        inbox.add(new)
    assert waiting.read_text() == "{not json, but waiting for the next batch to reject it"
    assert new.exists()


def test_request_retry_never_replaces_a_waiting_file(tmp_path):
    from components.data.inbox import Inbox
    from components.paths import Paths

    inbox = Inbox(Paths(tmp_path))
    (inbox.failed / "r-2.json").write_text(request_json("r-2", ["x"]))
    waiting = tmp_path / "data" / "requests" / "inbox" / "r-2.json"
    waiting.write_text("{a newer file with the same name")
    result = runner.invoke(app, ["request", "retry", "r-2", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "already has a file r-2.json" in result.output
    assert waiting.read_text() == "{a newer file with the same name"
    assert (inbox.failed / "r-2.json").exists()


ADD_AND_CANCEL = """
import json, sys
from pathlib import Path
from typer.testing import CliRunner
from flows.cli import app
root, request = sys.argv[1], sys.argv[2]
runner = CliRunner()
added = runner.invoke(app, ["request", "add", request, "--root", root])
cancelled = runner.invoke(app, ["request", "cancel", "cli-nomlflow", "--root", root])
print(json.dumps({"add": [added.exit_code, added.output], "cancel": [cancelled.exit_code, cancelled.output],
                  "mlflow imported": "mlflow" in sys.modules}))
"""


def test_request_add_and_cancel_never_touch_the_tracking_store(tmp_path):
    """Issue 21: `blur request add` and `cancel` read no MLflow store (slow to open, and needless): they
    work with the tracking URI pointing at a server that does not answer, never import mlflow, and
    create no mlflow.db."""
    import os
    import subprocess
    import sys

    repo = make_flow_repo(tmp_path / "repo")
    request = tmp_path / "nomlflow.json"
    request.write_text(request_json("cli-nomlflow", [tiny_subjects()[1]]))
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", ADD_AND_CANCEL, str(repo), str(request)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["add"][0] == 0, said["add"][1]
    assert said["cancel"][0] == 0, said["cancel"][1]
    assert not said["mlflow imported"]
    assert not (repo / "mlflow.db").exists()
    assert [p.name for p in (repo / "data" / "requests" / "cancelled").glob("*.json")] == ["cli-nomlflow.json"]


def test_looking_at_a_new_pipeline_creates_no_tracking_store(tmp_path):
    """`blur status` and `blur report` before any run say there is nothing yet and leave the folder as it
    was: reading a SQLite store that does not exist would create an empty one."""
    repo = make_flow_repo(tmp_path / "repo")
    assert not (repo / "mlflow.db").exists()
    status = runner.invoke(app, ["status", "--root", str(repo)])
    assert status.exit_code == 0, status.output
    assert "No champion yet" in status.output
    shown = runner.invoke(app, ["report", "--root", str(repo)])
    assert shown.exit_code == 1 and "no runs yet" in shown.output
    assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists()


def test_status_names_what_holds_erased_data_by_design(cli_repo):
    """Issue 21: `blur status` said no copy held an erased request, while the world, the target model
    (trained on it), the prepared splits, the request files and the DVC cache and remote still do."""
    output = " ".join(cli_repo[2]["status_after"].output.split())
    assert "no older model version or batch folder holds it" in output
    for holder in ("the world (demo world, generated from the seed)", "models/target", "data/requests/",
                   "the DVC cache and remote", ".cache/"):
        assert holder in output, holder


def test_every_commands_help_shows_its_whole_docstring_as_reflowed_paragraphs():
    """Help is rendered as markdown: a docstring's hard line breaks are reflowed to the terminal, and
    nothing in it is taken for markup and dropped (``<name>`` would be)."""
    import typer

    words = lambda text: " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())  # noqa: E731
    group = typer.main.get_group(app)
    commands = [([name], command) for name, command in group.commands.items()]
    commands += [([name, sub], c) for name, command in group.commands.items()
                 for sub, c in getattr(command, "commands", {}).items()]
    assert len(commands) >= 11, [path for path, _ in commands]
    for path, command in commands:
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "2000"})  # a paragraph fits on one line
        assert shown.exit_code == 0, shown.output
        lines = [words(line) for line in shown.output.splitlines()]
        for paragraph in (command.help or "").split("\n\n"):
            assert any(words(paragraph) in line for line in lines), (path, paragraph, shown.output)
        for param in command.params:  # option and argument help: nothing in it taken for markup and dropped
            assert words(getattr(param, "help", None) or "") in words(shown.output), (path, param.name)
