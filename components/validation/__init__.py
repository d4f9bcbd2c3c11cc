"""Great Expectations suites over a deletion request, the world, and the forget / retain sets.

``import components.validation`` is cheap: Great Expectations (seconds to import) is only
imported when :func:`validate_request_data` runs.

    report = validate_request_data(world=..., forget=..., retain=..., request=...,
                                   tokenizer=..., max_length=config.model.max_length,
                                   holdout=..., docs_dir=paths.report_files.data_docs,
                                   report_path=paths.report_files.validation)
    report.raise_if_failed()   # ValidationFailed(report): stop before unlearning
"""

from components.validation.report import ValidationFailed, ValidationReport, describe_failure
from components.validation.validate import validate_request_data

__all__ = ["ValidationFailed", "ValidationReport", "describe_failure", "validate_request_data"]
