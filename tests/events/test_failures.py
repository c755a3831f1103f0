"""Failure codes are defined once (`libs/events/failures.py`): every code has its status and
message, the contract's fixed messages win, and a reply with a code outside the table does not
decode (pure unit tests of our own code)."""

from __future__ import annotations

from typing import get_args

import msgspec
import pytest

from libs.events.commands import Failure, Rejected, Reply, encode, reply_decoder
from libs.events.failures import REFUSALS, FailureCode

# CONTRACT.md sections 4 and 5, word for word.
CONTRACT_MESSAGES: dict[FailureCode, str] = {
    "active_broadcast_exists": "Request already in progress. Cancel it first.",
    "no_longer_available": "No longer available",
    "request_cancelled": "Request cancelled",
    "request_expired": "Request expired",
}


def test_every_failure_code_has_a_status_and_a_message() -> None:
    """The table holds exactly the codes of `FailureCode`, each with a 4xx/503 and a message."""
    assert set(REFUSALS) == set(get_args(FailureCode))
    for refusal in REFUSALS.values():
        assert refusal.status in {403, 404, 409, 503} and refusal.message


def test_the_contracts_messages_are_fixed() -> None:
    """Each message the contract fixes is the table's, and marked fixed."""
    for code, message in CONTRACT_MESSAGES.items():
        assert REFUSALS[code] == (REFUSALS[code].status, message, True)


def test_a_refusal_answers_the_fixed_message_whatever_it_was_given() -> None:
    """A fixed code keeps the contract's text; another code may word its refusal."""
    assert Rejected("request_expired", "Expired!").failure.message == "Request expired"
    assert Rejected("not_found", "Vehicle not found").failure.message == "Vehicle not found"
    assert Rejected("driver_busy").failure.message == "Driver is busy"
    refused = Rejected("no_longer_available", available=2).failure
    assert (refused.code, refused.details) == ("no_longer_available", {"available": 2})


def test_a_reply_with_an_unknown_failure_code_does_not_decode() -> None:
    """msgspec checks the code on decode: a reply cannot carry a code without a status."""
    known = Reply(command_id="c", failure=Failure(code="driver_busy", message="m"))
    assert reply_decoder.decode(encode(known)) == known
    raw = encode(known).replace(b"driver_busy", b"made_up")
    with pytest.raises(msgspec.ValidationError):
        reply_decoder.decode(raw)
