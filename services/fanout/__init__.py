"""Real time (CONTRACT.md section 7), the writing side: domain events become per-user messages.

- `fold.py`, `state.py` and `messages.py`: pure. A broadcast's state at an event, and the
  contract's messages for that event with their recipients (their types: `frames.py` of
  `libs/readmodel`, shared with the gateway, which documents them).
- `projector.py` (one holder of its lease at a time): reads the event streams as the consumer
  group `projector` and delivers each event's messages to the recipients' inboxes
  (`libs/inbox`), recording each delivery in PostgreSQL (`projected.py`).

The gateway reads the inboxes and holds the sockets (`services/gateway/realtime`).
"""
