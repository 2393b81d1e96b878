"""Production start-up: the model pack synced from MODEL_BUCKET when MODEL_DIR holds none."""

from __future__ import annotations

from pathlib import Path

import pytest

from facefleet.common.config import Settings
from facefleet.worker.detection.pack import load_pack
from facefleet.worker.models import (
    PROVIDER_PREFERENCE,
    ModelPackError,
    available_providers,
    resolve_pack_dir,
)


def test_pack_synced_from_the_model_bucket(env, models_dir: Path, tmp_path: Path) -> None:
    s3 = env.aws.client("s3")
    bucket = env.names.model_bucket
    s3.create_bucket(Bucket=bucket)
    for path in models_dir.glob("*.onnx"):
        s3.upload_file(str(path), bucket, f"buffalo_l/{path.name}")
    target = tmp_path / "models"
    settings = Settings.from_env(
        {**env.environment(), "MODEL_BUCKET": bucket, "MODEL_DIR": str(target)}
    )
    folder = resolve_pack_dir(settings)
    assert folder == target
    assert sorted(p.name for p in folder.glob("*.onnx")) == sorted(
        p.name for p in models_dir.glob("*.onnx")
    )
    assert not list(folder.glob("*.part"))
    pack = load_pack(folder, warm=False)
    assert pack.model_id == load_pack(models_dir, warm=False).model_id  # same weights, same id
    # A baked-in pack is used as is, without the bucket.
    assert resolve_pack_dir(Settings.from_env({"MODEL_DIR": str(models_dir)})) == models_dir


def test_no_pack_anywhere_names_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError, match="MODEL_BUCKET is not set"):
        resolve_pack_dir(Settings.from_env({"MODEL_DIR": str(tmp_path)}))


def test_providers_follow_the_preference() -> None:
    providers = available_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert providers == [p for p in PROVIDER_PREFERENCE if p in providers]
