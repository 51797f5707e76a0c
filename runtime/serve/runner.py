"""``run_server``: the ``serve`` app under uvicorn on one socket, with a bounded drain on SIGTERM (torch-free).

Order: arguments, then the model (loaded, warmed up and checked against the settings), then the
port; so a bad model or setting costs no bound socket and no log lines, only its error.

SIGTERM (or SIGINT): the server keeps its port and answers new requests 503 ``draining`` (with
``Connection: close``) while the requests in flight finish; those still running ``drain_timeout_s``
after the signal are answered 503 too; then it stops. A second signal ends the drain at once. Exit is
bounded by ``drain_timeout_s`` plus about a second (at most ~2.5 s), even with a backend that never returns.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import uvicorn

from retina_deploy.core.errors import ConfigError, ModelFileError, RetinaDeployError
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.serve.app import ServeConfig, ServerState, create_app

DRAIN_GRACE_S = 1.0  # after the drain deadline: time for the 503 answers to go out
SHUTDOWN_S = 1.0  # then uvicorn's own wait for connections to close


def run_server(
    load: Callable[[], Detector],
    cfg: ServeConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    announce: Callable[[str], None] = print,
) -> int:
    """Load the model, then serve until SIGTERM/SIGINT (then drain); returns 0, or 1 when the model failed
    later (reported on ``/health/ready``).

    ``port`` 0 picks a free port; ``announce`` gets "listening on http://HOST:PORT" once bound. Raises
    ConfigError (bad host, port or settings, port in use, ``max_batch`` above the model's) and what ``load``
    raises (ModelFileError, TritonServerError, ...; any other exception of the load or the warm-up batch as
    ModelFileError) before anything is bound.
    """
    cfg = cfg or ServeConfig()
    if not isinstance(host, str) or not host.strip() or host != host.strip():
        raise ConfigError(f"host must be an address or name to listen on (0.0.0.0: all interfaces), got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be in 0..65535, got {port!r}")
    app = create_app(load, cfg)
    state: ServerState = app.state.retina
    try:
        state.open_model()
    except RetinaDeployError:
        raise
    except Exception as e:  # e.g. a backend's RuntimeError in the warm-up batch: one line for the CLI too
        raise ModelFileError(f"model failed to load: {type(e).__name__}: {e}") from e
    sock = _bind(host, port)
    config = uvicorn.Config(
        app, log_level="info", access_log=False, lifespan="on", timeout_graceful_shutdown=SHUTDOWN_S
    )
    server = _DrainingServer(config, state)
    state.on_fatal = lambda message: setattr(server, "should_exit", True)
    announce(f"listening on http://{_url_host(host)}:{sock.getsockname()[1]}")
    server.run(sockets=[sock])
    if isinstance(state.load_exception, RetinaDeployError):
        raise state.load_exception
    return 1 if state.load_error else 0


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _DrainingServer(uvicorn.Server):
    """uvicorn's Server with the drain described in the module docstring (and no re-raised signal)."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig, frame) -> None:
        # uvicorn's own handler records the signal and raises it again after shutdown (exit -15);
        # run_server promises a return value instead.
        if self.state.draining:
            self.force_exit = self.should_exit
            self.should_exit = True
        else:
            self.state.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        st = self.state
        if not st.draining:
            return False
        now = time.monotonic()
        if now >= st.drain_deadline:
            st.drain_expired.set()
        return st.active == 0 or now >= st.drain_deadline + DRAIN_GRACE_S
