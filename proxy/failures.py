"""Why a request failed: one exception per cause, raised where the cause is known.

None of them knows HTTP. Each port's error middleware renders them once, through the table in
proxy/errors.py, the way httpx maps its transport's errors once at the boundary:

    Failure
    ├── InvalidRequest          the client's request is malformed or breaks a rule (400)
    │   ├── BodyTooLarge        bigger than MAX_BODY_MB (413)
    │   └── UnreadableBody      a body that cannot be decoded as its encoding says (400)
    ├── NotAuthenticated        no or an unknown credential (401)
    ├── NotPermitted            a known caller that may not do this (403)
    ├── NotFound                no such thing (404)
    ├── Conflict                not possible in the sidecar's present state (409)
    ├── BudgetExceeded          the estimate does not fit a budget (429)
    ├── RateLimited             over a requests- or tokens-per-minute limit (429)
    ├── ClientGone              everyone who wanted the answer has left (499)
    ├── StoreUnavailable        Redis (or the ledger database) cannot answer (503)
    ├── Overloaded              the sidecar holds as much work as it may; retry shortly (503)
    └── UpstreamError           the upstream call did not give an answer to relay
        ├── UpstreamUnreachable no connection (502)   also a ConnectionError
        ├── UpstreamTimeout     no answer in time (504)   also a TimeoutError
        ├── BadUpstreamAnswer   an answer that is not what the API promises (502)
        ├── BreakerOpen         the breaker refuses calls for now (503)
        └── UpstreamBusy        no upstream slot freed within UPSTREAM_QUEUE_TIMEOUT (503)

Messages are shown to clients as they are, so they never hold a secret or an id.
"""

from __future__ import annotations


class Failure(Exception):
    """A failure the sidecar answers for itself. `param` names the offending input, `code` is
    the machine-readable reason (OpenAI's `error.code`), `retry_after_s` when retrying later
    can help."""

    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after_s = retry_after_s


class InvalidRequest(Failure):
    default_code = "invalid_value"


class BodyTooLarge(InvalidRequest):
    default_code = "request_too_large"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"The request body is larger than the {limit_bytes // (1024 * 1024)} MB this "
            "sidecar accepts."
        )


class UnreadableBody(InvalidRequest):
    default_code = "invalid_body"


class NotAuthenticated(Failure):
    pass


class NotPermitted(Failure):
    pass


class NotFound(Failure):
    default_code = "not_found"


class Conflict(Failure):
    """A valid request this sidecar cannot act on as it is configured or as things stand
    (feedback on semantic hits while the semantic cache is off)."""

    default_code = "conflict"


class BudgetExceeded(Failure):
    default_code = "budget_exceeded"


class RateLimited(Failure):
    default_code = "rate_limit_exceeded"


class ClientGone(Failure):
    default_code = "client_gone"

    def __init__(self) -> None:
        super().__init__("The client closed the request.")


class StoreUnavailable(Failure):
    pass


class Overloaded(Failure):
    default_code = "overloaded"


class UpstreamError(Failure):
    pass


class UpstreamUnreachable(UpstreamError, ConnectionError):
    default_code = "upstream_unreachable"

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"The upstream API could not be reached ({type(cause).__name__}).")


class UpstreamTimeout(UpstreamError, TimeoutError):
    default_code = "upstream_timeout"

    def __init__(self) -> None:
        super().__init__("The upstream API did not answer in time.")


class BadUpstreamAnswer(UpstreamError):
    default_code = "bad_upstream_answer"


class BreakerOpen(UpstreamError):
    default_code = "circuit_open"


class UpstreamBusy(UpstreamError):
    """Every upstream slot stayed taken for as long as a request may wait for one: answered
    at once with Retry-After instead of letting the queue grow without bound."""

    default_code = "upstream_busy"
