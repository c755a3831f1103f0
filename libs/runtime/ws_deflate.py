"""permessage-deflate (RFC 7692) for the gateway's sockets, with no zlib context between messages.

uvicorn's own offer (`ws_per_message_deflate=True`) keeps a compressor and a decompressor alive on
every socket for its whole life, so that each message may refer back to earlier ones: with its
settings (12-bit windows, `memLevel` 5) zlib holds about (1 << 14) + (1 << 14) bytes for the
compressor plus its state, and 1 << 12 bytes plus about 7 KiB for the decompressor. That doubled
the memory of an idle socket (15 → 47 KiB for a bare `websockets` server).

Here both sides give up context takeover: the answer always carries `server_no_context_takeover`
and `client_no_context_takeover` (RFC 7692 7.1.1.1 and 7.1.1.2: a server may add either when
the client did not offer it). Each message is then compressed and inflated on its own, and
websockets' `PerMessageDeflate` creates its zlib object when a message starts and drops it once
the message's last frame is done, so an idle socket holds none: it costs what a socket without
compression costs (tests/gateway/test_deflate_contexts.py). A message costs a fresh zlib object
instead, and compresses alone: a frame of ~185 bytes to ~133, where a kept context, finding the
previous frames' keys, would reach ~36 (docs/architecture.md, "Real time", has the figures).

The client's window is limited to 12 bits when it offers `client_max_window_bits` (browsers do),
so decompressing one of its messages needs about 11 KiB while it lasts. The 4 KiB limit on a
client message (`ws_max_size`) applies to the inflated size: websockets never inflates more than
what is left of it, and closes with 1009 past it, so a small compressed frame cannot inflate into
megabytes (tests/abuse/test_deflate.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from websockets.extensions import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

WINDOW_BITS = 12  # both directions; messages are far shorter than the 4 KiB window
MEMORY_LEVEL = 5  # zlib's hash table and buffers: 8 KiB each at this level

# One factory for every socket: negotiating reads it and never changes it.
NO_CONTEXT_DEFLATE: Sequence[ServerExtensionFactory] = (
    ServerPerMessageDeflateFactory(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=WINDOW_BITS,
        client_max_window_bits=WINDOW_BITS,
        compress_settings={"memLevel": MEMORY_LEVEL},
    ),
)
