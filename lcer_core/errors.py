"""Every error a user can cause, in one place.

The CLI maps :class:`LcerError` (and only it) to exit status 2 and one line on
stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "LcerError",
    "UnknownDatasetError",
    "UnknownMethodError",
    "UnknownUserError",
    "InvalidParameterError",
    "DownloadError",
    "ChecksumMismatchError",
    "DataFormatError",
    "EmptyDatasetError",
    "MissingDataError",
    "DamagedDataError",
    "StoreError",
    "StoreLockedError",
    "NonFiniteScoresError",
    "LcerHomeError",
    "OrchestrationError",
    "StorageError",
]


class LcerError(Exception):
    """Base class of the errors a user can cause; its message is one line."""


class UnknownDatasetError(LcerError):
    """A dataset name that is neither in the registry nor registered by the user."""


class UnknownMethodError(LcerError):
    """An explainer name that is not in the explainer registry."""


class UnknownUserError(LcerError):
    """A user id that is not in the prepared dataset."""


class InvalidParameterError(LcerError):
    """A hyperparameter or option outside its valid range.

    ``param`` names the parameter in the library's words (``k``, ``alpha``, ``n_users``); the
    message starts with it, and the command line says its flag instead (``--k``, ``--users``).
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DownloadError(LcerError):
    """A dataset archive could not be fetched after the bounded retries."""


class ChecksumMismatchError(LcerError):
    """Downloaded or extracted content does not have the registered sha256."""


class DataFormatError(LcerError):
    """A raw or user-supplied file does not have the expected layout."""


class EmptyDatasetError(LcerError):
    """Filtering left no user (or no item) to work with."""


class MissingDataError(LcerError):
    """A step needs an artefact (prepared data, trained model, results) that is not there yet."""


class DamagedDataError(MissingDataError):
    """State under LCER_HOME (prepared data, a checkpoint) that is there but cannot be read."""


class StoreError(LcerError):
    """The results database cannot be opened, migrated or queried."""


class StoreLockedError(StoreError):
    """Another process holds the results database for longer than the wait allows."""


class QueryTimeoutError(StoreError):
    """A query ran past its time limit and was stopped."""


class NonFiniteScoresError(LcerError):
    """The recommender produced NaN or infinite scores; nothing is stored."""


class LcerHomeError(LcerError):
    """LCER_HOME (or a folder under it) cannot be written: permissions or a full disk."""


class OrchestrationError(LcerError):
    """A flow run that the pipeline waited for (e.g. explanations on another work pool) did not complete."""


class StorageError(LcerError):
    """The storage URL (``LCER_STORAGE``, ``--storage``) is malformed, unreachable or not writable."""
