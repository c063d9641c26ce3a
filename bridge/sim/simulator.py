"""The simulated cloud's API logic (pure): one request in, one reply (status, type, body, delay) out."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.sim.behaviours import (
    ACTION,
    CT_GZIP_JSON,
    CT_HTML,
    CT_JSON,
    CT_TEXT,
    DEMO_DEVICES,
    DEMO_PASSWORD,
    DEMO_USER,
    DEVICE_ANSWERS,
    ERROR_RESULTS,
    FAULT_STATUS,
    PARAMS_KEY,
    RAW_FAULTS,
    REASONS,
    USER_NAMESPACE,
    Behaviour,
    Fault,
    RecordedRequest,
    Reply,
    json_object,
    photo_params_error,
    result_payload,
    terminal_of,
)


class Simulator:
    """The simulated cloud's API logic. Tests may change the public attributes between requests."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        users: dict[str, str] | None = None,
        devices: dict[str, Behaviour | str] | None = None,
        default_behaviour: Behaviour | str = Behaviour.UNKNOWN,
        fixed_tokens: Iterable[str] = (),
        timeout_delay: float = 15.0,
        record: bool = True,
        base_path: str = "/OpenApi",
    ) -> None:
        self.base_path = base_path.rstrip("/")
        # Runtime knobs: read by the server loop on every request, so changes apply to the next one.
        self.latency = latency
        self.users: dict[str, str] = dict(users) if users is not None else {DEMO_USER: DEMO_PASSWORD}
        self.devices: dict[str, Behaviour | str] = (
            dict(devices) if devices is not None else dict(DEMO_DEVICES)
        )
        for behaviour in self.devices.values():
            Behaviour(behaviour)  # fail at construction, not on the first request
        self.default_behaviour = default_behaviour
        self.timeout_delay = timeout_delay
        self.fault = Fault.NONE
        self.fault_count: int | None = None
        self.fault_login = False
        # Faults for one device's Instructions (by FAssetGUID), applied when no global `fault` is.
        self.device_faults: dict[str, Fault | str] = {}
        self.retry_after: float | None = 1.0  # Retry-After of a 503/429 fault; None sends none
        self.slow_delay = 5.0  # seconds before a SLOW fault's answer
        self.account_expired: set[str] = set()
        self.record = record
        # Observations.
        self.requests: list[RecordedRequest] = []
        self.login_count = 0
        self.instruction_count = 0
        self.connections_accepted = 0
        self.max_concurrent = 0
        # Internals.
        self._fixed_tokens = tuple(fixed_tokens)
        self._tokens: set[str] = set(self._fixed_tokens)
        self.issued_tokens: list[str] = []
        # open_access: any user logs in and any token not expired by expire_tokens() is accepted
        # (the CLI default, so a real config works against the simulator unchanged).
        self.open_access = False
        self._expired: set[str] = set()
        self._login_path = self.base_path + "/login"
        self._instruction_path = self.base_path + "/Instruction"
        self._file_counter = 0

    # -- runtime knobs that need normalising ------------------------------------------------------
    @property
    def default_behaviour(self) -> Behaviour:
        """Behaviour of a GUID not in `devices`."""
        return self._default_behaviour

    @default_behaviour.setter
    def default_behaviour(self, value: Behaviour | str) -> None:
        self._default_behaviour = Behaviour(value)

    @property
    def fault(self) -> Fault:
        """The fault applied to Instruction requests (and login when `fault_login`)."""
        return self._fault

    @fault.setter
    def fault(self, value: Fault | str) -> None:
        self._fault = Fault(value)

    # -- test helpers ---------------------------------------------------------------------------
    def expire_tokens(self) -> None:
        """Make every token issued so far, fixed ones included, answer 104."""
        self._expired = self._expired | self._tokens | set(self.issued_tokens)
        self._tokens = set()  # a new set rather than clear(): the loop thread may be iterating/adding

    def instructions_for(self, guid: str) -> list[dict[str, Any]]:
        """Recorded Instruction bodies addressed to `guid`, oldest first."""
        return [
            r.body
            for r in list(self.requests)
            if r.path == self._instruction_path and r.body is not None and r.body.get("FAssetGUID") == guid
        ]

    # -- the API --------------------------------------------------------------------------------
    def _reply(self, method: str, path: str, raw: bytes) -> Reply:
        """Decide the answer to one request. Runs on the server loop; must never block."""
        body = json_object(raw)
        if self.record:
            self.requests.append(RecordedRequest(path, body, time.monotonic()))
        is_instruction = path == self._instruction_path
        if not is_instruction and path != self._login_path:
            return 404, CT_TEXT, b"not found", 0.0
        if method != "POST":
            return 405, CT_TEXT, b"method not allowed", 0.0
        if is_instruction:
            self.instruction_count += 1
            fault = self._take_fault()
            if fault is Fault.NONE and body is not None and self.device_faults:
                fault = Fault(self.device_faults.get(str(body.get("FAssetGUID")), Fault.NONE))
            if fault is not Fault.NONE:
                return self._fault_reply(fault, login=False, body=body)
            return self._instruction(body)
        self.login_count += 1
        if self.fault_login:
            fault = self._take_fault()
            if fault is not Fault.NONE:
                return self._fault_reply(fault, login=True, body=body)
        return self._login(body)

    def _take_fault(self) -> Fault:
        """The fault for this request, counting down `fault_count`."""
        fault = self._fault
        if fault is Fault.NONE:
            return fault
        count = self.fault_count
        if count is not None:
            if count <= 1:
                self._fault = Fault.NONE
                self.fault_count = None
            else:
                self.fault_count = count - 1
            if count <= 0:
                return Fault.NONE
        return fault

    def _fault_reply(self, fault: Fault, *, login: bool, body: dict[str, Any] | None = None) -> Reply:
        delay = 0.0 if login else self.latency
        if fault in (Fault.RESET, Fault.CLOSE, Fault.HANG):
            return RAW_FAULTS[fault], "", b"", 0.0
        if fault in (Fault.SLOW, Fault.GZIP, Fault.HUGE_LENGTH, Fault.TRUNCATED):
            status, content_type, payload, _ = self._login(body) if login else self._instruction(body)
            if fault is Fault.SLOW:
                return status, content_type, payload, max(delay, self.slow_delay)
            if fault is Fault.GZIP:
                return status, CT_GZIP_JSON, payload, delay
            return RAW_FAULTS[fault], content_type, payload, delay
        if fault in FAULT_STATUS:
            status = FAULT_STATUS[fault]
            return status, CT_TEXT, f"{status} {REASONS[status]}".encode(), delay
        if fault is Fault.NOT_JSON:
            return 200, CT_HTML, b"<html>oops", delay
        if fault is Fault.MISSING_FIELDS:
            return 200, CT_JSON, b'{"Result": 200}', delay
        if fault is Fault.UNKNOWN_RESULT:
            return 200, CT_JSON, result_payload(999, "unknown error"), delay
        # BAD_RESPONSE: well-formed JSON whose content cannot be used.
        if login:
            return (
                200,
                CT_JSON,
                json.dumps({"Result": 200, "Message": "success", "FObject": []}).encode(),
                delay,
            )
        return 200, CT_JSON, self._success_payload("00000000-0000-0000-0000-000000000000", "garbage"), delay

    def _login(self, body: dict[str, Any] | None) -> Reply:
        user = body.get("FUserName") if body is not None else None
        password_md5 = body.get("FPassword") if body is not None else None
        if not isinstance(user, str) or not user or not isinstance(password_md5, str) or not password_md5:
            return 200, CT_JSON, result_payload(102, "FUserName and FPassword are required"), 0.0
        password = self.users.get(user)
        if self.open_access and password is None:
            password = user  # any account logs in: see `open_access`
            password_md5 = hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()
        expected = hashlib.md5(password.encode(), usedforsecurity=False).hexdigest() if password else ""
        if not password or not hmac.compare_digest(expected, password_md5.lower()):
            return 200, CT_JSON, result_payload(103, "user name or password error"), 0.0
        if user in self.account_expired:
            return 200, CT_JSON, result_payload(106, "account expired"), 0.0
        token = secrets.token_hex(16)
        self._tokens.add(token)
        self.issued_tokens.append(token)
        expires = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%S")
        account = {
            "FUserName": user,
            "FUserGUID": str(uuid.uuid5(USER_NAMESPACE, user)),
            "FTokenID": token,
            "FExpireTime": expires,
        }
        return (
            200,
            CT_JSON,
            json.dumps({"Result": 200, "Message": "success", "FObject": [account]}).encode(),
            0.0,
        )

    def _instruction(self, body: dict[str, Any] | None) -> Reply:
        latency = self.latency
        if body is None:
            return 200, CT_JSON, result_payload(102, "request body must be a JSON object"), latency
        token = body.get("FTokenID")
        if not isinstance(token, str) or not token:
            return 200, CT_JSON, result_payload(102, "FTokenID is required"), latency
        if token not in self._tokens and not (self.open_access and token not in self._expired):
            return 200, CT_JSON, result_payload(104, "token error"), latency
        if body.get("FAction") != ACTION:
            return 200, CT_JSON, result_payload(102, "Action is error"), latency
        guid = body.get("FAssetGUID")
        if not isinstance(guid, str) or not guid:
            return 200, CT_JSON, result_payload(102, "FAssetGUID is required"), latency
        problem = photo_params_error(body.get(PARAMS_KEY))
        if problem is None and "FTimeDifferent" in body and type(body["FTimeDifferent"]) is not int:
            problem = "FTimeDifferent must be an integer"
        if problem is None and "FLanguage" in body and not isinstance(body["FLanguage"], str):
            problem = "FLanguage must be a string"
        if problem is not None:
            return 200, CT_JSON, result_payload(102, problem), latency

        behaviour = self.devices.get(guid, self._default_behaviour)
        answer = DEVICE_ANSWERS.get(behaviour)
        if answer is not None:
            terminal = terminal_of(guid)[0]
            if answer == 0:
                self._file_counter += 1
                file_id = f"{terminal}_{self._file_counter}"
            else:
                file_id = "0"  # busy/error replies still carry all 8 fields
            response = f"({terminal},1,001,CAMERA,9,4,{answer},{file_id})"
            return 200, CT_JSON, self._success_payload(guid, response), latency
        if behaviour == Behaviour.TIMEOUT:
            # The cloud waited for the device for timeout_delay; latency is already inside that wait.
            return 200, CT_JSON, result_payload(*ERROR_RESULTS[behaviour]), max(latency, self.timeout_delay)
        if behaviour in ERROR_RESULTS:
            return 200, CT_JSON, result_payload(*ERROR_RESULTS[behaviour]), latency
        # Someone put a typo into `devices` at runtime: say so instead of crashing the connection.
        return 200, CT_JSON, result_payload(105, f"mock cloud: unknown behaviour {behaviour!r}"), latency

    @staticmethod
    def _success_payload(guid: str, response: str) -> bytes:
        terminal, terminal_id = terminal_of(guid)
        now = time.time()
        reply = {
            "Result": 200,
            "Message": "ins send ok",
            "FObject": {
                "terminalStrId": terminal_id,
                "terminalNum": terminal,
                "dateTime": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "dateTimestamp": int(now * 1000),
                "response": response,
            },
        }
        return json.dumps(reply).encode()
