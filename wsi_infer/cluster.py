"""Connecting to dask.distributed: an existing scheduler, or a local cluster of processes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from wsi_infer.errors import ClusterError

__all__ = ["WORKER_WAIT_S", "ClusterError", "check_address", "dask_client"]

logger = logging.getLogger(__name__)


#: Seconds to wait for the first worker of an existing cluster.
WORKER_WAIT_S = 60.0
_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


def check_address(scheduler: str) -> str:
    """``scheduler`` if it reads as a dask scheduler address ``SCHEME://HOST:PORT``."""
    scheme, sep, rest = scheduler.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme == "inproc" and sep and rest:
        return scheduler
    if not (sep and scheme in _SCHEMES and host and colon and port.isdigit()):
        raise ClusterError(
            f"{scheduler!r}: not a dask scheduler address; give SCHEME://HOST:PORT, "
            "e.g. tcp://127.0.0.1:8786 (the address `dask scheduler` prints)"
        )
    if not 0 < int(port) < 65536:
        raise ClusterError(f"{scheduler!r}: port {port} is outside 1..65535")
    return scheduler


@contextlib.contextmanager
def dask_client(
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int = 2,
    gpu: bool = False,
    worker_wait_s: float = WORKER_WAIT_S,
) -> Iterator[Any]:
    """Yield a ``distributed.Client``, or ``None`` to run in this process.

    ``scheduler`` connects to a running cluster (its workers each started with
    ``--resources GPU=1`` when they hold a GPU) and waits up to
    ``worker_wait_s`` seconds for a worker; ``workers`` starts a local cluster
    of that many processes, closed on exit.
    """
    if scheduler is None and not workers:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        check_address(scheduler)
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise ClusterError(f"{scheduler}: cannot reach the dask scheduler ({exc})") from exc
        try:
            _wait_for_a_worker(client, scheduler, worker_wait_s)
            yield client
        finally:
            client.close()
        return
    resources = {"GPU": 1} if gpu else None
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            resources=resources,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        logger.info("local dask cluster: %d workers x %d threads", workers, threads)
        yield client


def _wait_for_a_worker(client: Any, scheduler: str, seconds: float) -> None:
    if client.scheduler_info().get("workers"):
        return
    logger.warning("%s: no dask worker yet; waiting up to %.0f s for one", scheduler, seconds)
    try:
        client.wait_for_workers(1, timeout=seconds)
    except TimeoutError as exc:
        raise ClusterError(
            f"{scheduler}: the scheduler has no workers (none joined in {seconds:.0f} s); "
            f"start some with `dask worker {scheduler}`"
        ) from exc
