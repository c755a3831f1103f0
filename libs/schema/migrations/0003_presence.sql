-- Presence: each driver's availability is its own event stream `driver-<id>`, versioned here
-- (drivers.version belongs to the fleet registry's stream `fleet-driver.<id>`).
ALTER TABLE drivers ADD COLUMN presence_version integer NOT NULL DEFAULT 0;

-- An online driver has always been seen: the TTL sweep compares against last_seen_at.
ALTER TABLE drivers ADD CONSTRAINT drivers_online_seen_check
    CHECK (NOT online OR last_seen_at IS NOT NULL);

-- The TTL sweep pages through online drivers not seen lately, oldest first.
CREATE INDEX drivers_online_last_seen_idx ON drivers (last_seen_at, driver_id) WHERE online;

