"""Helpers for tests that run the API: its admin token, the environment that reproduces
a ``Settings`` in a child process (gunicorn, the CLI), and Prometheus text parsing."""

from __future__ import annotations

from bookrec.settings import Settings

ADMIN_TOKEN = "serving-tests-admin-token-0123456789"


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``BOOKREC_*`` environment that reproduces ``settings`` in a child process."""
    env = {
        "BOOKREC_HOME": str(settings.home),
        "BOOKREC_ARTIFACTS_URI": settings.resolved_artifacts_uri,
        "BOOKREC_RATE_LIMIT": settings.rate_limit,
        "BOOKREC_MODEL_POLL_INTERVAL_S": str(settings.model_poll_interval_s),
        "BOOKREC_RELOAD_STAGGER_S": str(settings.reload_stagger_s),
        "BOOKREC_API_LOG_FLUSH_INTERVAL_S": str(settings.api_log_flush_interval_s),
        "BOOKREC_RELOAD_CHANNEL": settings.reload_channel,
        "BOOKREC_REDIS_SOCKET_TIMEOUT_S": str(settings.redis_socket_timeout_s),
    }
    if settings.database_url:
        env["BOOKREC_DATABASE_URL"] = settings.database_url
    if settings.redis_url:
        env["BOOKREC_REDIS_URL"] = settings.redis_url
    if settings.admin_token:
        env["BOOKREC_ADMIN_TOKEN"] = settings.admin_token.get_secret_value()
    return env


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
