"""Real time (CONTRACT.md section 7), the socket side: users' inboxes (written by the fan-out
service, `libs/inbox`) forwarded to their WebSockets.

- `endpoint.py`: `GET /v1/ws` authenticates, subscribes, replays from the inbox, then forwards.
- `hub.py`, `connection.py`, `sender.py`: one pub/sub connection per gateway process; each
  socket has a bounded send buffer.
- `wire.py`: the frames as sent (`eventId` spliced in).
"""
