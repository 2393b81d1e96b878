"""The per-process settings, on pydantic-settings; resource names are `facefleet.common.names`.

`Settings` is built once per process from the environment (the existing service's variable names
are a contract) and validated at start-up: a missing or malformed value names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from facefleet.common.aws import DEFAULT_REGION, AwsTarget
from facefleet.common.names import NAMES


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


SERVICE_TYPES = ("detection", "grouping")
# FACE_RECOGNITION_CONSENT: opt_out indexes every user who has not switched face recognition off
# (the gallery's behaviour so far); opt_in indexes a user's photos only after `face_recognition:
# true` in the gallery's `users` document (`facefleet people recognition --user U on`).
CONSENT_MODES = ("opt_out", "opt_in")
# Illinois BIPA 740 ILCS 14/15(a): biometric identifiers are destroyed at the latest 3 years after
# the individual's last interaction; a longer setting is a configuration error.
BIPA_MAX_DAYS = 3 * 365
# The longest an indexing message can live (README "Retention schedule"): ingress queue and its
# DLQ 14 days, one redrive 14 more, then the indexing queue and its DLQ 14 and one redrive 14.
MESSAGE_LIFETIME_DAYS = 56


def _env(name: str, default: Any = None, rule: str = "", **constraints: Any) -> Any:
    """One setting: its environment variable (the alias), default, and the rule its constraints
    state, which the start-up error quotes."""
    return Field(default, validation_alias=name, description=rule, **constraints)


# pydantic's parse-error types, worded as the start-up error says them.
_EXPECTED = {
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_parsing": "expected a number",
    "bool_parsing": "expected a boolean",
}


class Settings(BaseSettings):
    """Per-process settings, one model for every process kind (workers, router, dispatcher, CLI):
    they share most variables and `load_service_settings` checks what each service needs.

    Build with `Settings.from_env(environ)` at an entry point and pass it in; `Settings(...)` with
    field names gives the defaults plus the values named (job definitions render them), never
    the process environment."""

    model_config = SettingsConfigDict(
        frozen=True, populate_by_name=True, protected_namespaces=(), case_sensitive=True
    )

    aws_region: str = _env("AWS_DEFAULT_REGION", DEFAULT_REGION)
    service_type: str = _env(
        "SERVICE_TYPE",
        "detection",
        f"one of {', '.join(SERVICE_TYPES)}",
        pattern=f"^({'|'.join(SERVICE_TYPES)})$",
    )
    bucket_name: str | None = _env("BUCKET_NAME")
    queue_url: str | None = _env("QUEUE_URL")
    group_face_queue_url: str | None = _env("GROUP_FACE_QUEUE_URL")
    gallery_images_mongo_uri: str | None = _env("GALLERY_IMAGES_MONGO_URI")
    huemn_mongo_uri: str | None = _env("HUEMN_MONGO_URI")
    face_group_bucket_name: str | None = _env("FACE_GROUP_BUCKET_NAME")
    log_group: str | None = _env("LOG_GROUP")
    message_visibility_timeout: int = _env(
        "MESSAGE_VISIBILITY_TIMEOUT", 1800, "between 1 and 43200 seconds", gt=0, le=43200
    )
    batch_size: int = _env("BATCH_SIZE", 5, "between 1 and 10 (SQS limit)", ge=1, le=10)
    max_face_workers: int = _env("MAX_FACE_WORKERS", 4, "at least 1", ge=1)
    # New in FaceFleet.
    aws_endpoint_url: str | None = _env("AWS_ENDPOINT_URL")
    model_dir: str | None = _env("MODEL_DIR")
    model_bucket: str | None = _env("MODEL_BUCKET")
    model_pack: str = _env("MODEL_PACK", "buffalo_l")
    detection_threshold: float = _env("DETECTION_THRESHOLD", 0.5, "between 0 and 1", ge=0.0, le=1.0)
    detection_size: int = _env(
        "DETECTION_SIZE", 640, "a multiple of 32, at least 160", ge=160, multiple_of=32
    )
    rec_batch_size: int = _env(
        "REC_BATCH_SIZE",
        0,
        "0 (the execution provider's measured default) or a positive batch size",
        ge=0,
    )
    max_image_pixels: int = _env("MAX_IMAGE_PIXELS", 50_000_000, "positive", gt=0)
    max_image_bytes: int = _env("MAX_IMAGE_BYTES", 50 * 1024 * 1024, "positive", gt=0)
    idle_exit_seconds: float = _env("IDLE_EXIT_SECONDS", 60.0, "not negative", ge=0)
    poll_wait_seconds: int = _env("POLL_WAIT_SECONDS", 20, "between 0 and 20", ge=0, le=20)
    shutdown_deadline_seconds: float = _env("SHUTDOWN_DEADLINE_SECONDS", 90.0, "positive", gt=0)
    # The Spot two-minute notice, read from instance metadata (facefleet.worker.runtime.spot).
    spot_notice_poll_seconds: float = _env(
        "SPOT_NOTICE_POLL_SECONDS",
        5.0,
        "0 (off) to 30 seconds (the notice comes 120 s ahead)",
        ge=0,
        le=30,
    )
    instance_metadata_endpoint: str = _env("INSTANCE_METADATA_ENDPOINT", "http://169.254.169.254")
    grouping_distance: float = _env(
        "GROUPING_DISTANCE",
        0.0,
        "a cosine distance between 0 and 2 (0 = the algorithm's default)",
        ge=0,
        le=2,
    )
    # Privacy: consent and retention (facefleet.worker.privacy.consent / .retention).
    face_recognition_consent: Literal["opt_out", "opt_in"] = _env(
        "FACE_RECOGNITION_CONSENT", "opt_out", f"one of {', '.join(CONSENT_MODES)}"
    )
    retention_inactive_days: int = _env(
        "RETENTION_INACTIVE_DAYS",
        730,
        f"between 1 and {BIPA_MAX_DAYS} days (BIPA: at most 3 years after the last interaction)",
        ge=1,
        le=BIPA_MAX_DAYS,
    )
    tombstone_retention_days: int = _env(
        "TOMBSTONE_RETENTION_DAYS",
        90,
        f"more than {MESSAGE_LIFETIME_DAYS} days (the longest a message can live) and at "
        f"most {BIPA_MAX_DAYS}",
        gt=MESSAGE_LIFETIME_DAYS,
        le=BIPA_MAX_DAYS,
    )
    retention_run_hours: float = _env(
        "RETENTION_RUN_HOURS",
        24.0,
        "0 (no purge when a grouping worker starts) to 720 hours",
        ge=0,
        le=24 * 30,
    )
    metrics_namespace: str = _env("METRICS_NAMESPACE", NAMES.metrics_namespace)
    metrics_to_cloudwatch: bool = _env("METRICS_TO_CLOUDWATCH", False)
    # The flow runtime's alerts topic (its role may publish to it, not list topics).
    alerts_topic_arn: str | None = _env("ALERTS_TOPIC_ARN")
    batch_job_array_index: int | None = _env("AWS_BATCH_JOB_ARRAY_INDEX")
    batch_job_attempt: int | None = _env("AWS_BATCH_JOB_ATTEMPT")
    batch_job_id: str | None = _env("AWS_BATCH_JOB_ID")

    @field_validator("face_recognition_consent", mode="before")
    @classmethod
    def _lowered(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the caller passes: `from_env` passes the environment mapping it was given,
        # so a test's mapping is the whole environment and `Settings()` is the defaults.
        return (init_settings,)

    @property
    def aws(self) -> AwsTarget:
        """The AWS target every client of this process uses."""
        return AwsTarget(self.aws_region, self.aws_endpoint_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting; raise one ConfigError listing each bad variable by name.
        An unset or empty variable takes the default. `environ=None` reads the process
        environment: entry points only."""
        source = os.environ if environ is None else environ
        known: dict[str, Any] = {
            alias: source[alias] for alias in ENV_NAMES.values() if source.get(alias)
        }
        try:
            return cls(**known)
        except ValidationError as error:
            raise ConfigError(
                "invalid settings: " + "; ".join(_problem(e, known) for e in error.errors())
            ) from None

    def require(self, *attributes: str) -> None:
        """Stop at start-up when a value this process needs is missing, naming the variables."""
        missing = [
            ENV_NAMES[attribute] for attribute in attributes if getattr(self, attribute) is None
        ]
        if missing:
            raise ConfigError("missing required settings: " + ", ".join(missing))

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables (for job definitions and local child processes)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            env[ENV_NAMES[name]] = str(value).lower() if isinstance(value, bool) else str(value)
        return env


ENV_NAMES: dict[str, str] = {
    name: str(info.validation_alias) for name, info in Settings.model_fields.items()
}


def _problem(error: Any, known: Mapping[str, str]) -> str:
    alias = str(error["loc"][0])
    rule = Settings.model_fields[_FIELD_OF[alias]].description or ""
    reason = _EXPECTED.get(error["type"]) or (f"must be {rule}" if rule else error["msg"])
    return f"{alias}={known.get(alias)!r}: {reason}"


_FIELD_OF = {alias: name for name, alias in ENV_NAMES.items()}

REQUIRED_BY_SERVICE: dict[str, tuple[str, ...]] = {
    "detection": (
        "queue_url",
        "group_face_queue_url",
        "gallery_images_mongo_uri",
        "face_group_bucket_name",
    ),
    "grouping": (
        "group_face_queue_url",
        "gallery_images_mongo_uri",
        "huemn_mongo_uri",
        "face_group_bucket_name",
    ),
}


def load_service_settings(service_type: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for a worker process, checked for everything that service needs."""
    settings = Settings.from_env(environ)
    settings.require(*REQUIRED_BY_SERVICE[service_type])
    if settings.model_dir is None and settings.model_bucket is None and service_type == "detection":
        raise ConfigError("missing required settings: one of MODEL_DIR, MODEL_BUCKET")
    return settings
