"""Real time (CONTRACT.md section 7): domain events become per-user messages on WebSockets.

- `fold.py` and `messages.py`: pure. A broadcast's state at an event, and the contract's
  messages for that event with their recipients.
- `projector.py` (one holder of its lease at a time): reads the event streams as the consumer
  group `projector` and delivers each event's messages to the recipients' inboxes.
- `inbox.py`: per-user Redis streams, delivered to exactly once per event by one Lua script,
  which also publishes each new message on the user's wake channel.
- `hub.py`, `connection.py`, `endpoint.py`: the gateway side. One pub/sub connection per
  gateway process; each socket has a bounded send buffer; `GET /v1/ws` replays from the inbox.
"""
