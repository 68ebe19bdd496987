"""Connecting to dask.distributed: an existing scheduler, or a local cluster of processes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from wsi_infer.errors import WsiInferError

__all__ = ["ClusterError", "dask_client"]

logger = logging.getLogger(__name__)


class ClusterError(WsiInferError, ConnectionError):
    """The dask scheduler cannot be reached or started."""


@contextlib.contextmanager
def dask_client(
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int = 2,
    gpu: bool = False,
) -> Iterator[Any]:
    """Yield a ``distributed.Client``, or ``None`` to run in this process.

    ``scheduler`` connects to a running cluster (its workers each started with
    ``--resources GPU=1`` when they hold a GPU); ``workers`` starts a local
    cluster of that many processes, closed on exit.
    """
    if scheduler is None and not workers:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"{scheduler}: cannot reach the dask scheduler ({exc})") from exc
        try:
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
