"""A small billdb HTTP/JSON client for integrators, on `requests` only.

It does what every billdb client must do (docs/INTEGRATION.md "Retries"):
send each write with a request_id chosen once, resend it unchanged when the
answer is lost or says UNAVAILABLE / DEADLINE_EXCEEDED, and send the next
request to the leader named in the `billdb-leader` header.

Configuration comes from the environment, as `billdb local env` prints it:
BILLDB_ENDPOINT (https://host:port of any node), BILLDB_CA (the cluster CA,
PEM) and BILLDB_TOKEN (a bearer token).
"""

import os
import time
import uuid

import requests

# Codes that leave the outcome of a write unknown or not yet decided: resend
# the SAME request (same request_id, same body). Every other code is final.
RETRY_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
ATTEMPTS_MAX = 8
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
TIMEOUT_S = 10


class BilldbError(Exception):
    """A final refusal: `code` is billdb's stable error code."""

    def __init__(self, status, body):
        self.status = status
        self.code = body.get("code", "UNKNOWN")
        self.message = body.get("message", "")
        self.details = body.get("details")
        super().__init__(f"{self.code}: {self.message}")


class Billdb:
    def __init__(self, endpoint=None, ca=None, token=None):
        self.endpoint = (endpoint or os.environ["BILLDB_ENDPOINT"]).rstrip("/")
        if not self.endpoint.startswith(("http://", "https://")):
            self.endpoint = "https://" + self.endpoint
        self.session = requests.Session()
        # Passed with every request: a session-wide `verify` would lose to
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE when those are set.
        self.verify = ca or os.environ.get("BILLDB_CA", True)
        self.session.headers["Authorization"] = "Bearer " + (token or os.environ["BILLDB_TOKEN"])

    @staticmethod
    def new_request_id():
        return str(uuid.uuid4())

    def call(self, method, path, body=None, params=None):
        """One request, retried as the rules say; the answer's JSON."""
        delay = BACKOFF_FIRST_S
        for attempt in range(1, ATTEMPTS_MAX + 1):
            try:
                r = self.session.request(
                    method,
                    self.endpoint + path,
                    json=body,
                    params=params,
                    timeout=TIMEOUT_S,
                    verify=self.verify,
                )
            except requests.ConnectionError:
                if attempt == ATTEMPTS_MAX:
                    raise
            else:
                self._follow_leader(r)
                answer = r.json()
                if r.ok:
                    return answer
                if answer.get("code") not in RETRY_CODES or attempt == ATTEMPTS_MAX:
                    raise BilldbError(r.status_code, answer)
                retry_after_ms = (answer.get("details") or {}).get("retry_after_ms")
                if retry_after_ms:
                    delay = max(delay, retry_after_ms / 1000)
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _follow_leader(self, r):
        # `billdb-leader: <id> <host:port>`: the leader's HTTP address.
        hint = r.headers.get("billdb-leader", "").split()
        if len(hint) == 2:
            scheme = self.endpoint.split("://", 1)[0]
            self.endpoint = f"{scheme}://{hint[1]}"
