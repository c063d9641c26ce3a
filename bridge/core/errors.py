"""The error vocabulary of capture-bridge.

Every failure a command can meet is one of the names in `ErrorCode`; the same
string appears verbatim in the state payload, the logs and the metrics.

    BridgeError
     ├── InvalidCommand      -> invalid_payload
     ├── UnknownDevice       -> unknown_device
     └── CloudError          -> any cloud-side ErrorCode (carries the cloud's Result)

`ConfigError` is separate: it stops the program, it never reaches a state.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """The `error` field of a state payload (docs/topics.md, "State payload")."""

    INVALID_PAYLOAD = "invalid_payload"
    UNKNOWN_DEVICE = "unknown_device"
    CAMERA_BUSY = "camera_busy"
    DEVICE_ERROR = "device_error"
    BAD_REQUEST = "bad_request"
    TOKEN_INVALID = "token_invalid"  # noqa: S105 - an error name, not a secret
    CLOUD_EXCEPTION = "cloud_exception"
    NO_SUCH_DEVICE = "no_such_device"
    SEND_FAILED = "send_failed"
    DEVICE_OFFLINE = "device_offline"
    NOT_SUPPORTED = "not_supported"
    DEVICE_TIMEOUT = "device_timeout"
    CLOUD_ERROR = "cloud_error"
    LOGIN_FAILED = "login_failed"
    CLOUD_UNREACHABLE = "cloud_unreachable"
    BAD_CLOUD_REPLY = "bad_cloud_reply"
    OVERLOADED = "overloaded"


# Instruction Result codes with a name of their own; any other non-200 is CLOUD_ERROR.
RESULT_ERRORS: dict[int, ErrorCode] = {
    102: ErrorCode.BAD_REQUEST,
    104: ErrorCode.TOKEN_INVALID,
    105: ErrorCode.CLOUD_EXCEPTION,
    106: ErrorCode.NO_SUCH_DEVICE,
    108: ErrorCode.SEND_FAILED,
    111: ErrorCode.DEVICE_OFFLINE,
    131: ErrorCode.NOT_SUPPORTED,
    138: ErrorCode.DEVICE_TIMEOUT,
}


class BridgeError(Exception):
    """A failure that ends one command with an `error` state."""

    code: ErrorCode

    def __init__(self, message: str, *, result: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.result = result


class InvalidCommand(BridgeError):
    """The payload on `capture/set` failed validation; the cloud is never called."""

    code = ErrorCode.INVALID_PAYLOAD


class UnknownDevice(BridgeError):
    """The topic id maps to no FAssetGUID; the cloud is never called."""

    code = ErrorCode.UNKNOWN_DEVICE


class CloudError(BridgeError):
    """The cloud call failed; `code` says how, `result` is the cloud's Result if one was had."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        result: int | None = None,
        retryable: bool = False,
        sent: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, result=result)
        self.code = code
        # retryable: a transient failure (refused, reset, timeout, 5xx, 429).
        self.retryable = retryable
        # sent: the Instruction may have reached the cloud; it is then never sent again.
        self.sent = sent
        # retry_after: seconds the cloud asked us to wait (Retry-After on a 503 or 429).
        self.retry_after = retry_after


class ConfigError(Exception):
    """The configuration file or environment is invalid; one line says why."""
