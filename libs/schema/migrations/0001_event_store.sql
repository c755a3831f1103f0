-- The event store: every domain event, in global order, unique per (stream, version).
CREATE TABLE events (
    position        bigserial PRIMARY KEY,
    stream_id       text        NOT NULL,
    version         integer     NOT NULL CHECK (version > 0),
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    data            jsonb       NOT NULL,
    correlation_id  text,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);
CREATE INDEX events_recorded_at_idx ON events (recorded_at);

-- Events committed but not yet on their Redis stream; the relay drains it.
CREATE TABLE outbox (
    position bigint PRIMARY KEY REFERENCES events (position)
);

-- Which consumer group has applied which event: consumers dedupe inside their own transaction.
CREATE TABLE processed_events (
    consumer_group text        NOT NULL,
    event_id       uuid        NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);
CREATE INDEX processed_events_at_idx ON processed_events (processed_at);
