"""Build demo users' galleries from the shared face photos and upload them to the gallery bucket.

Users are drawn deterministically from ../shared/faces: one user gets the real-world gallery
photos and the group shots, the others get LFW identities with several photos each, so every
user has people to find, strangers, and (for the first) several faces per photo.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from facefleet.common.aws import AwsTarget
from facefleet.common.messages import DetectionRequest
from facefleet.common.s3keys import image_key

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Photo:
    user_id: str
    image_id: str
    path: Path
    identity: str  # the folder it came from; "group" for multi-face photos

    @property
    def key(self) -> str:
        return image_key(self.user_id, self.image_id)


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


def _image_id(path: Path) -> str:
    # Stable across machines: derived from the file's path below faces/, not its contents.
    stem = path.stem.replace(" ", "_")
    digest = hashlib.sha1(str(path.parent.name + path.name).encode()).hexdigest()[:6]
    return f"{stem[:40]}-{digest}{path.suffix.lower()}"


def _lfw_people(lfw: Path, min_photos: int) -> list[Path]:
    return [d for d in sorted(lfw.iterdir()) if d.is_dir() and len(_photos(d)) >= min_photos]


def demo_gallery(
    faces_dir: Path,
    users: int = 3,
    people_per_user: int = 12,
    min_photos: int = 4,
    max_photos: int = 8,
    distractors: int = 10,
) -> list[Photo]:
    """Photos for `users` users; user 1 gets gallery/ and groups/, the rest LFW identities."""
    photos: list[Photo] = []
    first = "demo-user-1"
    for person in sorted(d for d in (faces_dir / "gallery").iterdir() if d.is_dir()):
        photos += [Photo(first, _image_id(p), p, person.name) for p in _photos(person)]
    photos += [Photo(first, _image_id(p), p, "group") for p in _photos(faces_dir / "groups")]
    lfw = faces_dir / "lfw"
    people = _lfw_people(lfw, min_photos)
    singles = [d for d in sorted(lfw.iterdir()) if d.is_dir() and len(_photos(d)) == 1]
    for number in range(2, users + 1):
        user = f"demo-user-{number}"
        chosen = people[(number - 2) * people_per_user : (number - 1) * people_per_user]
        for person in chosen:
            photos += [
                Photo(user, _image_id(p), p, person.name) for p in _photos(person)[:max_photos]
            ]
        for single in singles[(number - 2) * distractors : (number - 1) * distractors]:
            photos += [Photo(user, _image_id(p), p, single.name) for p in _photos(single)]
    return photos


def lfw_bulk(faces_dir: Path, count: int, user_id: str = "bulk-user") -> list[Photo]:
    """The first `count` LFW photos (all identities, in folder order) for one user."""
    photos: list[Photo] = []
    for person in sorted(d for d in (faces_dir / "lfw").iterdir() if d.is_dir()):
        for path in _photos(person):
            if len(photos) == count:
                return photos
            photos.append(Photo(user_id, _image_id(path), path, person.name))
    return photos


def upload(photos: Iterable[Photo], bucket: str, aws: AwsTarget) -> int:
    """Put each photo at its canonical key (an overwrite on a rerun: same key, same bytes)."""
    s3 = aws.client("s3")
    count = 0
    for photo in photos:
        s3.put_object(Bucket=bucket, Key=photo.key, Body=photo.path.read_bytes())
        count += 1
    return count


def requests(photos: Iterable[Photo], bucket: str) -> Iterator[DetectionRequest]:
    for photo in photos:
        yield DetectionRequest(photo.user_id, photo.image_id, bucket, photo.key)


def send(requests: Iterable[DetectionRequest], queue_url: str, aws: AwsTarget) -> int:
    """Send indexing messages in batches of ten (the SQS maximum)."""
    sqs = aws.client("sqs")
    batch: list[DetectionRequest] = []
    sent = 0

    def flush() -> None:
        nonlocal sent
        if not batch:
            return
        entries: list[SendMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "MessageBody": r.to_body()} for i, r in enumerate(batch)
        ]
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(f"SQS refused messages: {response['Failed']}")
        sent += len(batch)
        batch.clear()

    for request in requests:
        batch.append(request)
        if len(batch) == 10:
            flush()
    flush()
    return sent
