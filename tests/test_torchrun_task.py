"""The flow's unlearning task launches torchrun when ``unlearn.nproc`` > 1 (2 gloo ranks on CPU)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from components.config import Config, load_config
from components.paths import Paths
from pipeline_repo import make_flow_repo, request_json, tiny_subjects
from stub_stages import stubbed_stages


def test_effective_params_keep_the_flows_overrides(tmp_path):
    from flows.launch import torchrun_command, write_effective_params

    config = Config().with_overrides({"unlearn.nproc": 3, "unlearn.steps": 7, "model.max_length": "auto"})
    paths = Paths(tmp_path / "runs" / "batch-x", config_root=tmp_path)
    written = write_effective_params(config, paths)
    assert written.parent == paths.root and load_config(written) == config
    command = torchrun_command(written, paths, nproc=3)
    assert command[command.index("--nproc_per_node") + 1] == "3"
    assert command[command.index("--config-root") + 1] == str(tmp_path.resolve())


@pytest.mark.slow
def test_a_failing_launch_raises_with_the_stage_error(tmp_path):
    from flows.launch import LaunchError, unlearn_with_torchrun

    config = Config().with_overrides({"unlearn.nproc": 2})
    lines: list[str] = []
    with pytest.raises(LaunchError) as raised:  # an empty batch folder: no prepared splits
        unlearn_with_torchrun(config, Paths(tmp_path / "batch", config_root=tmp_path), log=lines.append)
    message = str(raised.value)
    assert "exited with status" in message and "unlearn failed" in message and "data/prepared" in message
    assert "ChildFailedError" not in message  # the children's errors, not the launcher's traceback
    assert lines and "launching 2 processes" in lines[0]


def test_a_stopped_launch_stops_its_processes(tmp_path):
    """Cancelling the task (an exception while streaming) terminates the launched process."""
    from flows.launch import _stream

    pid_file = tmp_path / "pid"
    script = (f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
              "print('step 1', flush=True); time.sleep(120)")

    def cancel(line: str) -> None:
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _stream([sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ), log=cancel)
    assert time.monotonic() - started < 60
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


@pytest.fixture(scope="module")
def two_rank_batch(tmp_path_factory, prefect_server, migrated_mlflow_db, seed_target):
    """Two requests, one batch each, through the whole flow with ``unlearn.nproc: 2`` given as a
    flow override: the first starts from the target, the second from the first's champion (real
    unlearning under torchrun; the oracle and evaluate steps are test doubles)."""
    from flows.pipeline import process_requests

    repo = make_flow_repo(tmp_path_factory.mktemp("torchrun") / "repo", mlflow_db=migrated_mlflow_db,
                          overrides={"registry.retention": "keep", "threads": 1})
    seed_target(repo)
    inbox = repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True)
    runs = {}
    with stubbed_stages(unlearn=False):
        for request_id, subject in (("req-two-ranks", tiny_subjects()[2]), ("req-from-champion", tiny_subjects()[4])):
            (inbox / f"{request_id}.json").write_text(request_json(request_id, [subject]))
            state = process_requests(root=str(repo), overrides={"unlearn.nproc": 2}, return_state=True)
            runs[request_id] = {"summary": state.result(), "flow_run_id": state.state_details.flow_run_id}
    first = runs["req-two-ranks"]
    return {"repo": repo, **first, "second": runs["req-from-champion"]["summary"]}


@pytest.mark.slow
def test_two_processes_unlearn_and_a_champion_is_registered(two_rank_batch):
    summary, repo = two_rank_batch["summary"], two_rank_batch["repo"]
    assert summary["processed"] == ["req-two-ranks"] and summary["gate"] == {"passed": True, "version": "1"}
    batch = repo / "runs" / summary["batch_id"]
    assert load_config(batch / "unlearn-params.yaml").unlearn.nproc == 2
    unlearned = json.loads((batch / "reports" / "unlearn.json").read_text())
    assert unlearned["steps"] == 12 and unlearned["final_forget_loss"] != unlearned["first_forget_loss"]


@pytest.mark.slow
def test_the_next_batch_starts_from_the_champion_under_torchrun_too(two_rank_batch):
    from components.registry import connect, tracking_store

    summary, repo = two_rank_batch["second"], two_rank_batch["repo"]
    assert summary["processed"] == ["req-from-champion"] and summary["gate"]["passed"]
    unlearned = json.loads((repo / "runs" / summary["batch_id"] / "reports" / "unlearn.json").read_text())
    assert Path(unlearned["start_model"]).is_relative_to(repo / "models" / "champion")
    client = connect(tracking_store(repo))
    assert str(client.get_model_version_by_alias("blur-demo", "champion").version) == "2"


@pytest.mark.slow
def test_the_ranks_output_goes_to_the_prefect_log_without_record_text(two_rank_batch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from components.data.loaders import load_records

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[two_rank_batch["flow_run_id"]])))
    messages = [log.message for log in logs]
    assert any("launching 2 processes (ddp) with torchrun" in m for m in messages)
    streamed = [m for m in messages if m.startswith("unlearn: unlearned in 12 steps")]
    assert len(streamed) == 1  # rank 0 alone prints the stage's summary
    batch = two_rank_batch["repo"] / "runs" / two_rank_batch["summary"]["batch_id"]
    forget = load_records(batch / "data" / "prepared" / "forget.jsonl")
    assert forget
    for record in forget:
        assert not any(record.answer in m or record.question in m for m in messages)


@pytest.mark.parametrize("written, expected", [
    ({"steps": 3, "resumed_from": None, "method": {"combiner": "blur"}, "seconds": 1.5}, None),
    ({"steps": "3"}, r"its summary is not one: .*unlearn\.json does not hold a valid UnlearnSummary: steps"),
])
def test_the_summary_the_launched_stage_wrote_is_read_through_its_type(tmp_path, monkeypatch, written, expected):
    import flows.launch
    from flows.launch import LaunchError, unlearn_with_torchrun

    paths = Paths(tmp_path / "batch", config_root=tmp_path)

    def stage_writes_its_summary(command, **_):
        paths.report_files.unlearn_summary.parent.mkdir(parents=True, exist_ok=True)
        paths.report_files.unlearn_summary.write_text(json.dumps(written))
        return 0, []

    monkeypatch.setattr(flows.launch, "_stream", stage_writes_its_summary)
    monkeypatch.setattr(flows.launch, "_check_devices", lambda nproc: None)
    config = Config().with_overrides({"unlearn.nproc": 2})
    if expected is None:
        assert unlearn_with_torchrun(config, paths, log=lambda line: None).to_dict() == written
    else:
        with pytest.raises(LaunchError, match=expected):
            unlearn_with_torchrun(config, paths, log=lambda line: None)
