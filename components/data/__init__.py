"""Records, loaders, deletion requests, the inbox (with DVC versioning) and the demo world."""

from components.data.loaders import load_records, save_records
from components.data.records import DataError, QARecord, Record, TextRecord
from components.data.requests import DeletionRequest, RequestError, Resolution, read_request, resolve_request, resolve_requests

__all__ = [
    "DataError",
    "DeletionRequest",
    "QARecord",
    "Record",
    "RequestError",
    "Resolution",
    "TextRecord",
    "load_records",
    "read_request",
    "resolve_request",
    "resolve_requests",
    "save_records",
]
