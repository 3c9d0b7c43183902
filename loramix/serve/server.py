"""The server's process plumbing: the listening socket, the web server's thread, and an orderly stop."""

from __future__ import annotations

import ipaddress
import socket
import threading

from loramix.errors import LoramixError
from loramix.serve.worker import RenderWorker


def listen(host: str, port: int) -> socket.socket:
    """A socket bound before the address is printed, so `--port 0` prints the port it got."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        listener.close()
        raise LoramixError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    listener.listen(64)
    return listener


def address(host: str, listener: socket.socket) -> str:
    """The page's address, with the port the socket got."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{listener.getsockname()[1]}/"


def exposure_warning(host: str, port: int) -> str | None:
    """What to tell a user who listens beyond this machine, or None on loopback."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"Warning: listening on {host}: anyone who reaches this machine on port {port} can render on it and "
            "read the LoRAs served")


def serve_until_stopped(app, listener: socket.socket, worker: RenderWorker) -> None:
    """Answer requests on a thread of their own while this thread, the one that loaded the pipeline, renders
    (torch's threads belong to it: a render on a second thread runs 2-2.5× slower). Returns after Ctrl-C or
    when the web server ends, with the waiting requests told that the server is stopping."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    web = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="loramix-web", daemon=True)
    web.start()
    try:
        worker.run(while_alive=web.is_alive)
    except KeyboardInterrupt:
        pass
    finally:
        worker.stop()
        server.should_exit = True
        web.join(10)
