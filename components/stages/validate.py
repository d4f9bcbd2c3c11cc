"""Stage ``validate``: Great Expectations suites over the request(s) and the splits."""

from __future__ import annotations

from components.config import Config
from components.context import RunContext, as_context
from components.paths import Paths
from components.stages.prepare import load_prepared_requests, load_splits


def tokenizer_for(config: Config, paths: Paths):
    """The tokenizer the model will see, as ``prepare`` saved it (the demo's, or the user's model's)."""
    from components.modeling.resolve import load_tokenizer

    return load_tokenizer(paths.tokenizer, config.model)


def validate(run: RunContext | Config, paths: Paths | None = None) -> dict:
    """Great Expectations suites over the request(s), world, forget and retain sets.

    Writes reports/validation.json and Data Docs under reports/data_docs/; raises
    :class:`components.validation.ValidationFailed` (nothing downstream runs) on failure.
    """
    from components.validation import validate_request_data

    ctx = as_context(run, paths).prepared()
    config, paths = ctx.config, ctx.paths
    splits = load_splits(paths)
    report = validate_request_data(
        world=splits["world"], holdout=splits["holdout"] or None,
        forget=splits["forget"], retain=splits["retain"],
        request=load_prepared_requests(paths), tokenizer=tokenizer_for(config, paths),
        max_length=config.model.max_length,
        docs_dir=paths.report_files.data_docs, report_path=paths.report_files.validation,
    )
    report.raise_if_failed()
    return report.to_dict()
