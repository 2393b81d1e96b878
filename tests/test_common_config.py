"""Settings keep the existing service's variable names and reject bad values by name."""

from __future__ import annotations

import pytest

from facefleet.common.config import ConfigError, Settings, load_service_settings
from facefleet.common.names import NAMES

CONTRACT = (
    "AWS_DEFAULT_REGION",
    "SERVICE_TYPE",
    "BUCKET_NAME",
    "QUEUE_URL",
    "GROUP_FACE_QUEUE_URL",
    "GALLERY_IMAGES_MONGO_URI",
    "HUEMN_MONGO_URI",
    "FACE_GROUP_BUCKET_NAME",
    "LOG_GROUP",
    "MESSAGE_VISIBILITY_TIMEOUT",
    "BATCH_SIZE",
    "MAX_FACE_WORKERS",
)


def test_defaults_match_the_existing_service() -> None:
    settings = Settings.from_env({})
    assert settings.message_visibility_timeout == 1800
    assert settings.batch_size == 5
    assert settings.max_face_workers == 4


def test_every_contract_variable_is_read() -> None:
    environ = {
        "AWS_DEFAULT_REGION": "eu-west-1",
        "SERVICE_TYPE": "grouping",
        "BUCKET_NAME": "gallery",
        "QUEUE_URL": "http://q/1",
        "GROUP_FACE_QUEUE_URL": "http://q/2",
        "GALLERY_IMAGES_MONGO_URI": "mongodb://a",
        "HUEMN_MONGO_URI": "mongodb://b",
        "FACE_GROUP_BUCKET_NAME": "groups",
        "LOG_GROUP": "/lg",
        "MESSAGE_VISIBILITY_TIMEOUT": "600",
        "BATCH_SIZE": "10",
        "MAX_FACE_WORKERS": "8",
    }
    settings = Settings.from_env(environ)
    assert settings.to_env().items() >= environ.items()
    assert set(CONTRACT) <= set(settings.to_env())


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("BATCH_SIZE", "five", "BATCH_SIZE='five'"),
        ("BATCH_SIZE", "11", "between 1 and 10"),
        ("MAX_FACE_WORKERS", "0", "MAX_FACE_WORKERS='0': must be at least 1"),
        ("MESSAGE_VISIBILITY_TIMEOUT", "-1", "MESSAGE_VISIBILITY_TIMEOUT"),
        ("SERVICE_TYPE", "thumbnails", "one of detection, grouping"),
        ("METRICS_TO_CLOUDWATCH", "maybe", "expected a boolean"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="invalid settings") as raised:
        Settings.from_env({variable: value})
    assert fragment in str(raised.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"BATCH_SIZE": "x", "MAX_FACE_WORKERS": "y"})
    assert "BATCH_SIZE" in str(raised.value) and "MAX_FACE_WORKERS" in str(raised.value)


def test_missing_required_values_stop_start_up() -> None:
    with pytest.raises(ConfigError) as raised:
        load_service_settings("detection", {"QUEUE_URL": "http://q/1"})
    message = str(raised.value)
    assert "GROUP_FACE_QUEUE_URL" in message and "GALLERY_IMAGES_MONGO_URI" in message
    assert "QUEUE_URL," not in message.replace("GROUP_FACE_QUEUE_URL", "")


def test_detection_needs_a_model_source() -> None:
    environ = {
        "QUEUE_URL": "q",
        "GROUP_FACE_QUEUE_URL": "g",
        "GALLERY_IMAGES_MONGO_URI": "m",
        "FACE_GROUP_BUCKET_NAME": "b",
    }
    with pytest.raises(ConfigError, match="MODEL_DIR, MODEL_BUCKET"):
        load_service_settings("detection", environ)
    assert load_service_settings("detection", {**environ, "MODEL_DIR": "/m"}).model_dir == "/m"


def test_names_are_the_single_source_for_batch_resources() -> None:
    assert NAMES.primary_environment.max_vcpus == 16
    assert NAMES.secondary_environment.max_vcpus == 256
    assert NAMES.secondary_environment.allocation_strategy == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert (NAMES.primary_queue.priority, NAMES.secondary_queue.priority) == (100, 50)
    assert NAMES.detection_job.name == "face-recognition-job"
    assert NAMES.grouping_job.name == "face-grouping-job"
    assert NAMES.detection_job.command == ("python3", "run_detection_service.py")
