"""gunicorn configuration for the bookrec API (``bookrec serve`` passes it with ``-c``).

Each worker builds its own app after the fork (no ``preload_app``): the model arrays are
memory-mapped from one local folder, so the workers share those pages through the page
cache, and after a reload no process keeps the old version mapped (a preloading master
would, doubling the model's footprint). Background threads start in ``post_worker_init``.
Prometheus samples go to a multiprocess folder that ``/metrics`` merges. Command-line
flags (``--bind``, ``--workers``) override the values here.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_OWN_METRICS_FOLDER: list[str] = []  # a folder this config made (removed on exit)


def _metrics_folder() -> str:
    """An empty multiprocess metrics folder, set in the environment before anything imports
    prometheus_client: it picks its value class (shared files or private memory) once, on
    import, so a module imported earlier (anything from the ``serving`` package) would
    leave every worker counting in private memory and ``/metrics`` empty. Files of an earlier run would be counted, so the folder is emptied."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        folder = tempfile.mkdtemp(prefix="bookrec-prom-")
        _OWN_METRICS_FOLDER.append(folder)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder


_metrics_folder()


def workers_per_cpu() -> int:
    """The default number of workers: one per CPU this process may run on (each worker runs
    Python under one GIL, so more workers than CPUs only take turns)."""
    return len(os.sched_getaffinity(0))


# One BLAS/OpenMP thread per worker: the workers are the parallelism, and each extra BLAS
# thread costs a stack and buffers in every worker. Read when NumPy loads, so set here,
# before the master imports the app.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

wsgi_app = "serving.app:create_worker_app()"
bind = os.environ.get("BOOKREC_BIND", "127.0.0.1:8000")
# One worker per CPU (on this 2-core machine 4 workers gave the same throughput as 2 and a
# longer tail). Threads cover the waits on Redis and PostgreSQL.
workers = int(os.environ.get("BOOKREC_WORKERS") or workers_per_cpu())
worker_class = "gthread"
threads = int(os.environ.get("BOOKREC_THREADS", "4"))
preload_app = False
# Longer than the load balancer's idle timeout (60 s in the AWS template): the balancer,
# not gunicorn, must close an idle connection, or it may send a request on a connection
# gunicorn is closing at that moment, and the client gets a 502.
keepalive = int(os.environ.get("BOOKREC_KEEPALIVE_S", "75"))
limit_request_line = 8190  # gunicorn's maximum; longer request lines get its HTML 414
timeout = 60
graceful_timeout = 15
max_requests = 0
accesslog = None  # the app writes one JSON line per request itself
errorlog = "-"
loglevel = os.environ.get("BOOKREC_LOG_LEVEL", "info")
proc_name = "bookrec-api"


def on_starting(server) -> None:
    """Import the app's code (Flask, NumPy, SciPy, the model loader) in the master once, so
    the forked workers share those pages; the model itself is loaded by each worker."""
    import importlib

    for module in ("serving.app", "bookrec.models.persist", "bookrec.registry"):
        importlib.import_module(module)


def when_ready(server) -> None:
    """Forget the samples the master wrote while preloading (it serves no requests)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid())


def post_worker_init(worker) -> None:
    """Reset fork-inherited connections and start this worker's background threads."""
    services = getattr(worker.wsgi, "extensions", {}).get("bookrec")
    if services is not None:  # absent for the benchmark's trivial baseline app
        services.after_fork()


def worker_exit(server, worker) -> None:
    """Flush the API log and stop background threads of an exiting worker."""
    app = getattr(worker, "wsgi", None)
    if app is not None and "bookrec" in getattr(app, "extensions", {}):
        app.extensions["bookrec"].close()


def on_exit(server) -> None:
    """Remove the metrics folder this config created (a preset one is the caller's)."""
    for folder in _OWN_METRICS_FOLDER:
        shutil.rmtree(folder, ignore_errors=True)


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges from the merged metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
