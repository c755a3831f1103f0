"""uvicorn's graceful shutdown, without resetting connections the kernel had already taken.

uvicorn stops by closing its listening sockets and then telling each connection it knows of to
finish. A connection whose TCP handshake had completed but which the event loop had not yet
accepted (it sat in the listening socket's accept queue) was reset by that close, though its
client had connected and sent its request: to the client, a request taken and dropped. A
client only gets a refusal it can trust (ECONNREFUSED: nothing was sent) once the listener is
gone.

`DrainingServer.shutdown` is uvicorn's, except that it first accepts every connection still
queued on each listening socket, in the same synchronous step in which it closes the listener
(the event loop cannot run in between, leaving only the instant between the last `accept` and
the close for a handshake to be reset), and serves them like any other: each is a fresh connection,
which the protocol (`http_head.HeadLimits.shutdown`) gives a short grace to send its request,
answers, and closes. Connections made after the listeners closed are refused by the kernel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from uvicorn.server import Protocols

logger = logging.getLogger("uvicorn.error")


class DrainingServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        logger.info("Shutting down")

        # Stop accepting new connections, taking those the kernel already completed.
        queued = self._stop_listening()
        for sock in sockets or []:
            sock.close()
        for conn in queued:
            await self._serve_accepted(conn)
        # Let transports made before the listeners closed (their connection_made was still
        # scheduled) join the connections told below.
        await asyncio.sleep(0)

        # Request shutdown on all existing connections.
        told: set[Protocols] = set()
        self._tell_connections(told)
        await asyncio.sleep(0.1)
        self._tell_connections(told)  # and any that joined since

        try:
            await asyncio.wait_for(
                self._wait_tasks_to_complete(), timeout=self.config.timeout_graceful_shutdown
            )
        except TimeoutError:
            logger.error(
                "Cancel %s running task(s), timeout graceful shutdown exceeded",
                len(self.server_state.tasks),
            )
            for t in self.server_state.tasks:
                t.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")

        # Send the lifespan shutdown event, and wait for application shutdown.
        if not self.force_exit:
            await self.lifespan.shutdown()

    def _stop_listening(self) -> list[socket.socket]:
        """Accept every connection queued on the listening sockets, then close them: one
        synchronous step, so that no handshake completes in between to be reset."""
        queued: list[socket.socket] = []
        for server in self.servers:
            for listener in server.sockets:
                queued += _accept_queued(listener.fileno())
            server.close()
        if queued:
            logger.info("Took %d queued connection(s) while closing the listeners", len(queued))
        return queued

    async def _serve_accepted(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(self._protocol, sock=conn)
        except OSError as e:  # the client reset it meanwhile
            logger.debug("Queued connection lost before it was served: %r", e)
            conn.close()

    def _protocol(self) -> asyncio.Protocol:
        """A protocol like uvicorn's own for a connection it accepts (`Server.startup`)."""
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )

    def _tell_connections(self, told: set[Protocols]) -> None:
        for connection in list(self.server_state.connections):
            if connection not in told:
                told.add(connection)
                connection.shutdown()


def _accept_queued(listener: int) -> list[socket.socket]:
    """Every connection in the accept queue of the listening socket `listener` now, without
    waiting for more. Through a duplicate of the descriptor: the event loop's own socket object
    may not offer `accept` (uvloop's does not)."""
    taken: list[socket.socket] = []
    with socket.socket(fileno=os.dup(listener)) as sock:
        sock.setblocking(False)  # as the loop's is already: the flag is shared
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                break
            except ConnectionAbortedError:  # reset by its client while queued
                continue
            except OSError as e:  # out of descriptors, say: the rest are reset, as by uvicorn
                logger.warning("Could not take queued connections: %r", e)
                break
            conn.setblocking(False)
            taken.append(conn)
    return taken
