"""One settings object, read from the environment (prefix ``BOOKREC_``) and ``.env``.

Every entry point builds it once (``get_settings()``) and passes it down. Unset
infrastructure falls back to embedded defaults that work on a bare machine: an
embedded PostgreSQL under ``<home>/pgdata``, a local artifact folder, an
in-process cache instead of Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "token", "admin", "password"}


class Settings(BaseSettings):
    """Runtime configuration. Addresses of infrastructure live here and nowhere else."""

    model_config = SettingsConfigDict(
        env_prefix="BOOKREC_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: str = Field("local", description="local, ci or production")
    home: Path = Field(
        Path(".bookrec"),
        description="Project-local folder for embedded PostgreSQL data, artifacts and logs",
    )

    # PostgreSQL: a SQLAlchemy URL; unset means the embedded server under <home>/pgdata.
    database_url: str | None = None
    # The API's least-privilege role (production; `bookrec db api-role` creates it).
    api_db_role: str = "bookrec_api"
    api_db_password: SecretStr | None = None

    # Artifact store: a folder path or s3://bucket/prefix; unset means <home>/artifacts.
    artifacts_uri: str | None = None
    # Promotion gate: JSON overrides of bookrec.gate.Thresholds, e.g. {"max_relative_drop": 0.02}.
    gate_thresholds: dict[str, float | str] = Field(default_factory=dict)
    # Approval of close calls: no answer within this many seconds means rejected.
    approval_timeout_s: float = Field(43200.0, gt=0, description="Approval deadline (12 h)")
    approval_poll_s: float = Field(
        10.0, gt=0, description="How often a waiting approval run checks for an answer"
    )

    # Rollouts (issue 17): a gate pass starts the rollout flow instead of promoting, with
    # these parameters, e.g. "interleave=0.5" or "interleave=0.4,canary=0.1,bake_minutes=20"
    # (bookrec.rollout_rule.parse_spec); unset or "off": promote on offline metrics alone.
    rollout_default: str | None = Field(
        None, description="Rollout spec the promotion gate uses instead of promoting"
    )

    # Test-only fault switch (serving/faults.py), "<version>=<rate>": that version fails this
    # share of the recommendation requests it answers. Unset by default; refused in production.
    test_fault_version_error_rate: str | None = Field(
        None, description="Test only: VERSION=RATE makes a model version fail requests"
    )

    # Redis: unset means an in-process cache and no pub/sub.
    redis_url: str | None = None
    redis_socket_timeout_s: float = 0.05

    # S3 and other AWS endpoints (moto, MinIO, LocalStack) and region.
    s3_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    cloudwatch_endpoint_url: str | None = None
    cloudwatch_namespace: str = "bookrec"
    cloudwatch_metrics: str = Field(
        "emf", description="Pipeline metrics: emf (log lines), api (PutMetricData) or off"
    )

    # Serving.
    admin_token: SecretStr | None = None
    model_poll_interval_s: float = 5.0
    reload_stagger_s: float = Field(
        2.0, ge=0, description="Each worker swaps to a new model after a random 0..N s delay"
    )
    cache_ttl_s: int = 300
    search_refresh_s: float = Field(
        30.0,
        gt=0,
        description="Each API worker checks the books table this often and rebuilds its "
        "search index when the table changed (a new book is found within this time)",
    )
    rate_limit: str = "600 per minute"
    fast_cached_reads: bool = Field(
        True,
        description="Answer cached reads a worker holds in memory before Flask "
        "(serving/fastpath.py); false sends every request through Flask",
    )
    rate_limit_sync_s: float = Field(
        0.05,
        ge=0,
        description="With Redis, each worker settles a client's hits with Redis at most this "
        "often (0: one Redis call per request)",
    )
    trusted_proxies: int = Field(
        0,
        ge=0,
        le=10,
        description="Proxy hops in front of the API whose X-Forwarded-For/-Proto to trust "
        "(1 behind one load balancer); 0 ignores those headers",
    )
    api_log_batch_size: int = 1000
    api_log_flush_interval_s: float = 1.0
    log_retention_days: int = Field(
        30, ge=1, description="Days of api_logs, impressions and rating events kept"
    )
    api_key_cache_ttl_s: float = Field(
        5.0, ge=0, description="Seconds a worker trusts a looked-up API key (revocation delay)"
    )
    attribution_window_days: float = Field(
        7.0, gt=0, description="A rating counts for a list shown this many days before it"
    )
    serving_urls: str = Field(
        "http://127.0.0.1:8000",
        description="Comma-separated base URLs of serving instances the reload flow calls",
    )
    reload_channel: str = "bookrec:model:reload"
    reload_deadline_s: float = Field(
        120.0, gt=0, description="The reload flow waits this long for every worker to reload"
    )

    # Prefect (the project's own defaults; Prefect reads PREFECT_* itself).
    prefect_api_url: str | None = Field(
        None, description="Prefect API of an existing server; unset: the local one on prefect_port"
    )
    prefect_port: int = Field(4200, gt=0, lt=65536, description="Port of the local Prefect server")
    api_port: int = Field(8000, gt=0, lt=65536, description="Port `bookrec up` serves the API on")

    # Watchdog: where the Prefect automations on the nightly runs send their alerts.
    alert_webhook: str | None = Field(
        None, description="URL the watchdog automations POST to (a Prefect Webhook block)"
    )
    nightly_deadline_s: int = Field(
        4 * 3600, ge=10,
        description="Seconds after a nightly run starts (02:00 UTC) by which it must have "
        "completed (default 4 h: 06:00 UTC)",
    )

    @field_validator(
        "database_url", "artifacts_uri", "redis_url", "s3_endpoint_url", "prefect_api_url",
        "alert_webhook", "rollout_default", "test_fault_version_error_rate", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """Treat an empty environment variable as unset."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        """Outside local use a placeholder admin token is a misconfiguration, not a secret."""
        token = self.admin_token.get_secret_value() if self.admin_token else None
        weak = token is not None and (token.lower() in _PLACEHOLDER_SECRETS or len(token) < 16)
        if weak and self.environment == "production":
            raise ValueError(
                    "BOOKREC_ADMIN_TOKEN is a placeholder or shorter than 16 characters"
                )
        if self.test_fault_version_error_rate and self.environment == "production":
            raise ValueError("BOOKREC_TEST_FAULT_VERSION_ERROR_RATE is a test switch; it is "
                             "refused in production")
        return self

    @property
    def home_dir(self) -> Path:
        """Absolute home folder."""
        return self.home.expanduser().resolve()

    @property
    def pgdata_dir(self) -> Path:
        """Data folder of the embedded PostgreSQL."""
        return self.home_dir / "pgdata"

    @property
    def log_dir(self) -> Path:
        """Folder for logs of processes that bookrec starts."""
        return self.home_dir / "logs"

    @property
    def resolved_artifacts_uri(self) -> str:
        """The artifact store URI, defaulting to a local folder."""
        return self.artifacts_uri or str(self.home_dir / "artifacts")

    @property
    def uses_embedded_postgres(self) -> bool:
        """True when no database URL is configured."""
        return self.database_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Build the settings once per process (entry points call this; libraries take a Settings)."""
    return Settings()
