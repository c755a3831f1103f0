-- Read models of the dispatch domain, written in the same transaction as the events they follow.

CREATE TABLE vehicles (
    vehicle_id     text PRIMARY KEY,
    transporter_id text             NOT NULL,
    vehicle_type   text             NOT NULL,
    lat            double precision NOT NULL,
    lng            double precision NOT NULL,
    version        integer          NOT NULL,
    updated_at     timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX vehicles_type_position_idx ON vehicles (vehicle_type, lat, lng);
CREATE INDEX vehicles_transporter_idx ON vehicles (transporter_id);

CREATE TABLE drivers (
    driver_id      text PRIMARY KEY,
    transporter_id text        NOT NULL,
    name           text        NOT NULL,
    phone          text        NOT NULL,
    online         boolean     NOT NULL DEFAULT false,
    last_seen_at   timestamptz,
    version        integer     NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drivers_transporter_idx ON drivers (transporter_id);

CREATE TABLE broadcasts (
    broadcast_id     text PRIMARY KEY,
    customer_id      text        NOT NULL,
    state            text        NOT NULL,
    end_reason       text,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    state_changed_at timestamptz NOT NULL,
    pickup           jsonb       NOT NULL,
    drop_location    jsonb       NOT NULL,
    note             text,
    notified_count   integer     NOT NULL DEFAULT 0,
    request_hash     text        NOT NULL,
    history          jsonb       NOT NULL DEFAULT '[]',
    version          integer     NOT NULL
);
-- One active broadcast per customer, whatever Redis holds.
CREATE UNIQUE INDEX broadcasts_one_active_per_customer
    ON broadcasts (customer_id) WHERE state IN ('created', 'broadcasting', 'partially_filled');
CREATE INDEX broadcasts_active_expiry_idx
    ON broadcasts (expires_at) WHERE state IN ('created', 'broadcasting', 'partially_filled');

CREATE TABLE truck_requests (
    truck_request_id text PRIMARY KEY,
    broadcast_id     text    NOT NULL REFERENCES broadcasts (broadcast_id),
    slot             integer NOT NULL,
    vehicle_type     text    NOT NULL,
    state            text    NOT NULL,
    transporter_id   text,
    assignment_id    text,
    UNIQUE (broadcast_id, slot)
);
CREATE INDEX truck_requests_open_idx ON truck_requests (broadcast_id, vehicle_type, slot)
    WHERE state = 'open';

CREATE TABLE broadcast_recipients (
    broadcast_id   text NOT NULL REFERENCES broadcasts (broadcast_id),
    transporter_id text NOT NULL,
    PRIMARY KEY (broadcast_id, transporter_id)
);
CREATE INDEX broadcast_recipients_transporter_idx ON broadcast_recipients (transporter_id);

CREATE TABLE assignments (
    assignment_id    text PRIMARY KEY,
    broadcast_id     text        NOT NULL REFERENCES broadcasts (broadcast_id),
    truck_request_id text        NOT NULL UNIQUE REFERENCES truck_requests (truck_request_id),
    transporter_id   text        NOT NULL,
    vehicle_type     text        NOT NULL,
    state            text        NOT NULL,
    driver_id        text,
    vehicle_id       text,
    created_at       timestamptz NOT NULL,
    version          integer     NOT NULL DEFAULT 0
);
CREATE INDEX assignments_transporter_idx ON assignments (transporter_id) WHERE state <> 'cancelled';
CREATE INDEX assignments_broadcast_idx ON assignments (broadcast_id);
-- A driver holds one active assignment at a time, whatever Redis holds.
CREATE UNIQUE INDEX assignments_one_active_per_driver
    ON assignments (driver_id) WHERE state = 'driver_assigned';

-- Replies of executed commands: a redelivered or retried command gets the same reply, once.
CREATE TABLE command_results (
    command_id  text PRIMARY KEY,
    reply       jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX command_results_recorded_at_idx ON command_results (recorded_at);

-- HTTP Idempotency-Key records, per caller.
CREATE TABLE idempotency_keys (
    principal       text        NOT NULL,
    key             text        NOT NULL,
    request_hash    text        NOT NULL,
    response_status integer,
    response_body   bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
