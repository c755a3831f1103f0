-- Single-holder roles (the outbox relay, the fan-out): who holds each, until when, and the
-- fencing token every write of the role carries (libs/events/lease.py). Times are PostgreSQL's
-- own clock, so instances with skewed clocks never both believe they hold a role.
CREATE TABLE leases (
    role        text        PRIMARY KEY,
    holder      text        NOT NULL,
    token       bigint      NOT NULL,
    expires_at  timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL
);

-- The outbox relay's log of what it published to Redis: batch `seq` of Redis epoch `epoch` held
-- the events at `positions`. Redis holding fewer batches than this log says means it lost its
-- newest writes; the relay republishes the batches after the ones it still holds.
CREATE TABLE relay_log (
    epoch        text        NOT NULL,
    seq          bigint      NOT NULL,
    positions    bigint[]    NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (epoch, seq)
);
CREATE INDEX relay_log_published_at_idx ON relay_log (published_at);
