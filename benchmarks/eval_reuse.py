"""Evaluation reuse: `dvc repro` twice on a profile, the second after an unlearning change (README appendix)."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import REPO, fmt, log, table
from components.artifacts import Metrics, Resources
from components.config import load_config
from components.paths import Paths

app = harness.cli(__doc__)  # the command: main, at the end
STEM = "eval_reuse"
PROFILES = {"smollm2": "pretrained", "demo": "."}
STEMS = {"smollm2": STEM, "demo": f"{STEM}_demo"}  # the SmolLM2 profile's is the acceptance run


def _call(folder: Path, env: dict[str, str], log_file: Path, *argv: str, refused_ok: bool = False) -> float:
    """``python -m ARGV`` in ``folder``, logged to ``log_file``; its seconds (``refused_ok``: a gate refusal)."""
    started = time.perf_counter()
    with log_file.open("a") as out:
        code = subprocess.run([sys.executable, "-m", *argv], cwd=folder, env=env, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    if code and not (refused_ok and code == 1 and any(Paths(folder).failed.glob("*.json"))):
        raise RuntimeError(f"{' '.join(argv)} failed in {folder} (see {log_file})")
    return time.perf_counter() - started


def _scale_lr(params: Path, factor: float) -> None:
    """Multiply ``unlearn.lr`` in a params file in place (the ``  lr:`` line after its ``unlearn:`` line)."""
    text = params.read_text()
    lr = re.compile(r"^  lr: *([^\s#]+).*$", re.M).search(text, re.search(r"^unlearn:", text, re.M).end())
    params.write_text(f"{text[:lr.start()]}  lr: {float(lr[1]) * factor!r}{text[lr.end():]}")


def _clone(profile: str, scratch: Path) -> tuple[Path, dict[str, str]]:
    """A fresh clone of HEAD with the base model and fine-tune cache copied in; (profile folder, env)."""
    shutil.rmtree(scratch, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(scratch)], check=True)
    for shared in (Path("models/base"), Path(PROFILES[profile]) / ".cache" / "finetune"):
        if (REPO / shared).exists():
            shutil.copytree(REPO / shared, scratch / shared)
    return scratch / PROFILES[profile], _env(scratch)


def _env(scratch: Path) -> dict[str, str]:
    """The environment commands run under in the scratch clone: its code, offline, this interpreter's tools."""
    return dict(os.environ, PYTHONPATH=str(scratch), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
                PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def run(profile: str, scratch: Path) -> dict[str, Any]:
    """Two `dvc repro` runs of ``profile`` in a fresh clone at ``scratch``."""
    folder, env = _clone(profile, scratch)
    runs = []
    for label in ("first", "second"):
        if label == "second":
            _scale_lr(folder / "params.yaml", 1.5)
        log(f"{profile}: {label} dvc repro in {folder}")
        runs.append(_record(Paths(folder), label, _call(folder, env, folder / f"{label}.log", "dvc", "repro")))
    evaluate = [r["evaluate"]["floor"]["evaluate_seconds"] + r["evaluate"]["floor"]["measure_seconds"] for r in runs]
    results = _compared(profile, runs)
    results["summary"] |= {"evaluate_seconds": evaluate, "second_over_first": round(evaluate[1] / evaluate[0], 3)}
    return results


def _record(paths: Paths, label: str, seconds: float | None) -> dict[str, Any]:
    """A run's wall time, its evaluate stage's record (cache hits, floor) and its metrics."""
    return {"run": label, "wall_seconds": None if seconds is None else round(seconds, 1),
            "evaluate": Resources.read(paths.resources).stage("evaluate"),
            "metrics": Metrics.load(paths.metrics).model_dump(mode="json")}


def _compared(profile: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Two runs' results: are the target's and oracle's metrics identical, what did the second score or reuse."""
    first, second = runs
    cache = second["evaluate"]["cache"].items()
    return {"profile": profile, "machine": harness.machine(), "runs": runs, "summary": {
        "reference_metrics_identical": {role: first["metrics"][role] == second["metrics"][role]
                                        for role in ("target", "oracle")},
        "second_scored": [role for role, c in cache if c["misses"]],
        "second_reused": [role for role, c in cache if c["hits"] and not c["misses"]]}}


def _batch(folder: Path, label: str, seconds: float | None, output: str) -> dict[str, Any]:
    """A batch's record: the newest batch folder's evaluate record and metrics, and the flow's cache lines."""
    batch_dirs = sorted((p for p in (folder / "runs").iterdir() if Paths(p).resources.exists()),
                        key=lambda p: Paths(p).resources.stat().st_mtime)
    lines = [line.split("|")[-1].strip() for line in output.splitlines() if "cache hit" in line or "cache miss" in line]
    return _record(Paths(batch_dirs[-1]), label, seconds) | {"batch": batch_dirs[-1].name, "log": lines}


def run_flow(profile: str, scratch: Path, resume: bool = False) -> dict[str, Any]:
    """Two `blur process` batches, the second a retry of the refused first (``resume``: from it)."""
    folder = scratch / PROFILES[profile]
    log_file = folder / "flow.log"
    if resume and not (any(Paths(folder).failed.glob("*.json")) and log_file.exists()):
        raise SystemExit(f"--resume: {folder} holds no refused first batch (a request in data/requests/failed/ and "
                         "flow.log); run without --resume to start in a fresh clone")
    if resume:
        env, batches = _env(scratch), [_batch(folder, "first", None, log_file.read_text(errors="replace"))]
        log(f"{profile}: resuming after the first batch ({batches[0]['batch']})")
    else:
        (folder, env), batches = _clone(profile, scratch), []
        # the models as the pipeline leaves them (target and oracle from the fine-tune cache; no evaluation cached)
        _call(folder, env, log_file, "dvc", "repro", "finetune")

    def blur(*args: str, refused_ok: bool = False) -> float:
        return _call(folder, env, log_file, "flows.cli", *args, "--root", ".", refused_ok=refused_ok)

    for label in ("first", "second")[len(batches):]:
        if label == "first":  # a relative request path is the profile folder's (an absolute one stays as it is)
            blur("request", "add", str(folder / load_config(folder / "params.yaml").request))
        elif not any(Paths(folder).failed.glob("*.json")):
            raise RuntimeError("the first batch's request was not refused by the gate, so there is nothing to "
                               "retry: this measurement needs a profile whose first batch fails its gate")
        else:
            _scale_lr(folder / "params.yaml", 1.5)
            blur("request", "retry", "--all")
        log(f"{profile}: {label} blur process in {folder}")
        mark = log_file.stat().st_size
        seconds = blur("process", refused_ok=True)
        batches.append(_batch(folder, label, seconds, log_file.read_text(errors="replace")[mark:]))
    return _compared(profile, batches)


ROWS = [("run", "run"), ("dvc repro s", "wall_seconds", 0),
        ("evaluate s", ("evaluate", "floor", "evaluate_seconds"), 1),
        ("floor s", ("evaluate", "floor", "floor_seconds"), 1), ("ratio", ("evaluate", "floor", "ratio"), 2),
        ("CPU ratio", ("evaluate", "floor", "cpu_ratio"), 2),
        ("cache (reused / computed)", lambda r: ", ".join(f"{role} {c['hits']} / {c['misses']}"
                                                          for role, c in r["evaluate"]["cache"].items()))]
PHASES = [("run", "run"), ("phase", "phase"), ("s", "seconds", 1), ("floor s", "floor_seconds", 1),
          ("CPU s", "cpu_seconds", 1), ("CPU floor s", "cpu_floor_seconds", 1)]


def _fields(results: dict[str, Any]) -> dict[str, Any]:
    """What both write-ups say: the profile, the machine, what the second run scored, the reference metrics."""
    s = results["summary"]
    return {"profile": results["profile"], "m": results["machine"], "scored": ", ".join(s["second_scored"]) or "none",
            "same": ", ".join(f"{role} {'identical' if ok else 'DIFFERENT'}"
                              for role, ok in s["reference_metrics_identical"].items())}


def render(results: dict[str, Any]) -> str:
    """The write-up, every figure read from ``results``."""
    phases = [{"run": r["run"], "phase": name, **phase} for r in results["runs"]
              for name, phase in (r["evaluate"]["floor"].get("phases") or {}).items()]
    return harness.template(STEM)["main"].format(
        **_fields(results), stem=STEMS[results["profile"]], runs=table(results["runs"], ROWS),
        phases=table(phases, PHASES), ratio=fmt(results["summary"]["second_over_first"], 2))


FLOW_ROWS = [("batch", "run"), ("blur process s", "wall_seconds", 0)] + ROWS[2:]


def render_flow(results: dict[str, Any]) -> str:
    """The flow write-up, every figure and log line read from ``results``."""
    logs = "\n".join(f"- {r['run']} batch (`{r['batch']}`): `{line}`" for r in results["runs"] for line in r["log"])
    return harness.template(STEM)["flow"].format(
        **_fields(results), stem=f"{STEMS[results['profile']]}_flow", runs=table(results["runs"], FLOW_ROWS),
        logs=logs or "- (no cache line in the flow's log)",
        reused=", ".join(results["summary"]["second_reused"]) or "none")


@harness.command(app, __name__)
def main(profile: str = "smollm2", scratch: Path = Path("/tmp/blur-eval-reuse"), out: Path = harness.OUT,
         report_only: bool = harness.REPORT_ONLY,
         flow: bool = harness.typer.Option(False, help="two `blur process` batches instead of two `dvc repro` runs"),
         resume: bool = harness.typer.Option(False, help="--flow: go on from the refused first batch in --scratch")
         ) -> None:
    if profile not in PROFILES:
        raise SystemExit(f"unknown profile '{profile}'; choose one of {sorted(PROFILES)}")
    name, write_up = (f"{STEMS[profile]}_flow", render_flow) if flow else (STEMS[profile], render)
    if report_only:
        return harness.report_only(out, name, write_up)
    results = run_flow(profile, scratch, resume) if flow else run(profile, scratch)
    harness.write_report(results, out, name, write_up)
    log(f"second evaluate scored: {results['summary']['second_scored']}")
