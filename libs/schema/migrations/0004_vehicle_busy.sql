-- A vehicle holds one active assignment at a time, whatever Redis holds: a truck is never booked
-- twice. The acceptance service translates a violation to `vehicle_busy`.
CREATE UNIQUE INDEX IF NOT EXISTS assignments_one_active_per_vehicle
    ON assignments (vehicle_id) WHERE state = 'driver_assigned';
