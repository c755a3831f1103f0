-- The events whose messages the projector delivered to the users' inboxes, by their position in
-- `events`. Redis keeps marks of its own, but loses them with its data; the relay then publishes
-- recent events again, and this record keeps them from reaching the users twice. The largest
-- position is where a new projector starts: every event past it is new. Pruned after a day.
CREATE TABLE projected_events (
    position     bigint      PRIMARY KEY,
    projected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX projected_events_at_idx ON projected_events (projected_at);
