"""The per-user inboxes: the contract between the fan-out, which writes each user's messages
into them, and the gateway, which replays and forwards them to the user's sockets."""
