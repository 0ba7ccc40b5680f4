"""The last resort for an engine that can't recover by itself.

An engine restarts its own loop after a crash (see `Engine.problem`). One that stays unable to serve, stuck
inside a step or failing to reload its model, can't be mended from inside the process: after
`engine_exit_after_seconds` the server exits with `EXIT_STATUS`, so that its supervisor (systemd, Kubernetes,
a container runtime) starts it afresh. Meanwhile `/health` answers 503, so a load balancer sends nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from pipeserve.service.models import ServedModel

log = logging.getLogger("pipeserve.server")

EXIT_STATUS = 70  # EX_SOFTWARE: an internal error, as supervisors that restart on failure expect


async def watch_engines(
    models: Iterable[ServedModel], exit_after: float, exit_server: Callable[[], None], *, every: float = 1.0
) -> None:
    """Run until a model has been unable to serve for `exit_after` seconds, then call `exit_server` once."""
    failing_since: dict[str, float] = {}
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        for served in models:
            if served.engine.remote:
                continue  # an upstream that is down is not fixed by restarting this server
            problem = served.engine.problem()
            name = served.config.id
            if problem is None:
                if failing_since.pop(name, None) is not None:
                    log.warning("%s serves again", name)
                continue
            since = failing_since.setdefault(name, now)
            if since == now:
                log.error("%s can't serve: %s", name, problem)
            if now - since >= exit_after:
                log.critical(
                    "%s has been unable to serve for %.0f s (%s); exiting with status %d so that a supervisor "
                    "restarts pipeserve",
                    name,
                    now - since,
                    problem,
                    EXIT_STATUS,
                )
                exit_server()
                return
