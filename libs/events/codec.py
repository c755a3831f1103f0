"""Encoding of events: JSON via msgspec, one reusable decoder for the whole catalogue."""

from __future__ import annotations

import msgspec

from libs.events.catalogue import DomainEvent, Envelope, Event

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[DomainEvent] = msgspec.json.Decoder(DomainEvent)
_envelope_decoder = msgspec.json.Decoder(Envelope)

ENVELOPE_FIELD = b"envelope"


class UndecodableMessage(ValueError):
    """A stream entry or stored row is not a valid catalogue message."""


def encode(value: Event | Envelope) -> bytes:
    return _encoder.encode(value)


def decode_event(raw: bytes | str) -> DomainEvent:
    try:
        return _event_decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise UndecodableMessage(str(e)) from e


def decode_envelope(raw: bytes | str) -> Envelope:
    try:
        return _envelope_decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise UndecodableMessage(str(e)) from e


def envelope_from_fields(fields: dict[bytes, bytes]) -> Envelope:
    """Decode the single-field stream entry the relay writes."""
    raw = fields.get(ENVELOPE_FIELD)
    if raw is None:
        raise UndecodableMessage("stream entry has no 'envelope' field")
    return decode_envelope(raw)
