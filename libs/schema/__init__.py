"""The PostgreSQL schema every service shares, in one place: the event store and outbox, the
read models, the bookkeeping tables (`migrations/`, numbered SQL files) and `migrate.py`, which
applies them (`weelo migrate`)."""
