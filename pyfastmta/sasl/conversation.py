"""One SASL exchange as smtpd drives it: start with a mechanism and an optional initial
response, answer each challenge, end with success (the user name) or failure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SaslStep:
    """What the backend says after a response: "continue" with a challenge (base64, sent as
    `334 challenge`), "ok" with the authenticated user name, or "fail" with the reason the
    backend gave, if any ("" when it gave none). A "fail" that is temporary (the backend could not be
    asked) is answered 454 4.7.0 instead."""

    outcome: str
    challenge: str = ""
    username: str = ""
    reason: str = ""
    temporary: bool = False


def continue_with(challenge: str) -> SaslStep:
    return SaslStep("continue", challenge=challenge)


def succeeded(username: str) -> SaslStep:
    return SaslStep("ok", username=username)


def failed(reason: str, *, temporary: bool = False, username: str = "") -> SaslStep:
    return SaslStep("fail", reason=reason, temporary=temporary, username=username)
