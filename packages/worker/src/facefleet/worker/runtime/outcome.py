"""What became of a message, and the one place an error is classified into an outcome.

Handlers raise or return; `classify` decides (in the style of a batch processor's
success/failure split): an outage of a dependency (MongoDB, S3, SQS) keeps the message
(`Outcome.RETRY`), anything else is the message's own fault (`Outcome.MALFORMED`). A handler that
settles several messages per call combines their outcomes with `worse`.
"""

from __future__ import annotations

from enum import StrEnum

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from pymongo.errors import ConnectionFailure, ExecutionTimeout, WTimeoutError


class Outcome(StrEnum):
    DONE = "done"
    MALFORMED = "malformed"
    RETRY = "retry"
    DEFER = "defer"


_RETRYABLE_AWS_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeoutException",
        "ProvisionedThroughputExceededException",
    }
)


def is_outage(error: BaseException) -> bool:
    """True for errors of an unreachable or overloaded dependency: retry later, keep the message."""
    if isinstance(error, ConnectionFailure | ExecutionTimeout | WTimeoutError):
        return True  # includes ServerSelectionTimeoutError, AutoReconnect, NetworkTimeout
    if isinstance(
        error,
        EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | ConnectionClosedError,
    ):
        return True
    if isinstance(error, ClientError):
        response = error.response
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        code = str(response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in _RETRYABLE_AWS_CODES
    return isinstance(error, ConnectionError | TimeoutError)


def classify(error: BaseException) -> Outcome:
    """The outcome of a message whose handling raised `error`: RETRY for an outage (the message
    is kept and retried with backoff), MALFORMED for anything else (redelivered, then the DLQ)."""
    return Outcome.RETRY if is_outage(error) else Outcome.MALFORMED


_SEVERITY = {Outcome.DONE: 0, Outcome.MALFORMED: 1, Outcome.DEFER: 2, Outcome.RETRY: 3}


def worse(current: Outcome, new: Outcome) -> Outcome:
    """A message with several parts: an outage on any keeps it (RETRY beats MALFORMED)."""
    return new if _SEVERITY[new] > _SEVERITY[current] else current


class OutageGuard:
    """`with OutageGuard() as guard:` around one part of a batch (an image, a user's request):
    an outage there is caught and kept in `guard.error`, so the handler settles that part as
    RETRY and goes on; any other error propagates to the consumer, which classifies it (the
    message alone, then MALFORMED). The handlers' one way to tell the two apart."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    def __enter__(self) -> OutageGuard:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> bool:
        if isinstance(error, Exception) and classify(error) is Outcome.RETRY:
            self.error = error
            return True
        return False

    @property
    def hit(self) -> bool:
        return self.error is not None
