"""Run the suites with Great Expectations 1.x and build its Data Docs.

Everything GX is imported inside :func:`run_suites` (GX takes seconds to import). Each
run uses a fresh *ephemeral* Data Context: suites, validation definitions and
results live in memory, so no ``gx/`` folder appears anywhere; the only thing written to
disk is the Data Docs site, whose folder is the caller's ``docs_dir``.

Per suite: one pandas Data Source asset with a whole-dataframe Batch Definition, an
Expectation Suite and a Validation Definition, run with result format COMPLETE (so every
unexpected row is listed). The definition is run itself, not through a Checkpoint: a
checkpoint would add nothing here (its actions are not used) and checks every definition's
freshness against the stores once more per run. The results go to the context's
validation results store as a checkpoint's would. All runs share one run id, named after
the request(s). Data Docs are built once, after the last run, with ``build_data_docs``
(GX compiles its page templates anew for every build, about a second each).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from components.validation.frames import Frame
from components.validation.suites import Suite

SITE_NAME = "validation_site"
DATASOURCE_NAME = "validation_frames"
# What the GX site builder writes; cleared before a build so the folder shows this run only.
_SITE_ENTRIES = ("index.html", "validations", "expectations")


@dataclass
class CheckOutcome:
    key: str
    expectation: str  # the GX expectation type, e.g. "expect_column_values_to_be_unique"
    success: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class SuiteOutcome:
    suite: Suite
    frame: Frame
    success: bool
    checks: list[CheckOutcome]


def gx_version() -> str:
    import great_expectations

    return great_expectations.__version__


def _dataframe(frame: Frame):
    import pandas as pd

    n = len(frame)
    # An unnamed index: GX then reports unexpected rows as plain index values (1, 2, ...).
    return pd.DataFrame(frame.columns, index=pd.RangeIndex(1, n + 1), columns=list(frame.columns))


def _context(docs_dir: Path | None):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites[SITE_NAME] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _expectation(check):
    import great_expectations.expectations as gxe

    cls = getattr(gxe, check.expectation)
    return cls(**check.kwargs, description=check.description, meta={"check": check.key}, severity=check.severity)


def clear_site(docs_dir: Path) -> None:
    """Remove the pages of an earlier build (not the static assets, not other files)."""
    for entry in _SITE_ENTRIES:
        path = docs_dir / entry
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_suites(
    pairs: Sequence[tuple[Suite, Frame]], docs_dir: Path | None = None, *, run_name: str = "validation"
) -> list[SuiteOutcome]:
    """Validate each frame against its suite; with ``docs_dir``, write the Data Docs site there.

    ``run_name`` becomes a folder name in Data Docs: pass a safe one (letters, digits, '-', '_').
    """
    import datetime as dt

    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    if docs_dir is not None:
        docs_dir = Path(docs_dir).resolve()
        docs_dir.mkdir(parents=True, exist_ok=True)
        clear_site(docs_dir)
    context = _context(docs_dir)
    source = context.data_sources.add_pandas(DATASOURCE_NAME)
    run_id = RunIdentifier(run_name=run_name, run_time=dt.datetime.now(dt.timezone.utc))
    outcomes = []
    for suite, frame in pairs:
        batch = source.add_dataframe_asset(suite.name).add_batch_definition_whole_dataframe(suite.name)
        expectations = context.suites.add(
            gx.ExpectationSuite(name=suite.name, expectations=[_expectation(c) for c in suite.checks])
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=expectations)
        )
        result = definition.run(batch_parameters={"dataframe": _dataframe(frame)},
                                result_format={"result_format": "COMPLETE"}, run_id=run_id)
        outcomes.append(SuiteOutcome(suite, frame, bool(result.success), _check_outcomes(result)))
    if docs_dir is not None:
        context.build_data_docs(site_names=[SITE_NAME])
    return outcomes


def _check_outcomes(result) -> list[CheckOutcome]:
    checks = []
    for item in result.results:
        config = item.expectation_config
        error = _error_message(item.exception_info or {})
        checks.append(
            CheckOutcome(
                key=(config.meta or {}).get("check", config.type),
                expectation=config.type,
                success=bool(item.success),
                result=dict(item.result or {}),
                error=error,
            )
        )
    return checks


def _error_message(info: dict) -> str | None:
    """GX keeps one exception record, or one per metric it tried to compute."""
    records = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for record in records:
        if record.get("raised_exception"):
            return str(record.get("exception_message") or "the expectation raised an error")
    return None
