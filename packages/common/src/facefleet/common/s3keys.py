"""Every S3 key layout FaceFleet writes or reads, in one place.

- gallery bucket (BUCKET_NAME): `users/<user id>/<image id>`, the image id being the file
  name with its extension (or a digest of a key in nested folders); the user id must own the key,
  so one user's message can never index another user's photo;
- face-group bucket (FACE_GROUP_BUCKET_NAME): detection's aligned crops
  `faces/<user id>/<image id>/<face id>.jpg`, and grouping's person covers
  `people/<user id>/<person id, 6 digits>.<ext of the crop>`.
"""

from __future__ import annotations

import hashlib
import re

USER_KEY_PREFIX = "users"
FACES_PREFIX = "faces"
PEOPLE_PREFIX = "people"
# User, image and face ids: what may appear as one path segment of a key.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")


def user_key_prefix(user_id: str) -> str:
    return f"{USER_KEY_PREFIX}/{user_id}/"


def image_key(user_id: str, image_id: str) -> str:
    """The canonical gallery key of an image: its id is its file name in its owner's prefix
    (extension included), so `image_id_from_key(user_id, image_key(user_id, i)) == i` and a
    FaceFleet request and the S3 notification of the same upload name the same image."""
    return f"{user_key_prefix(user_id)}{image_id}"


def image_id_from_key(user_id: str, key: str) -> str:
    """The image id a key names, unique per object key and stable across reprocessing: the file
    name itself, extension included (`plain.jpg` and `plain.png` are two photos), when it is a
    plain identifier directly in the user's prefix; else a digest of the whole relative key
    (uploads keep their own names: spaces, unicode, nested folders)."""
    relative = key[len(user_key_prefix(user_id)) :]
    if "/" not in relative and ID_PATTERN.match(relative):
        return relative
    return "k" + hashlib.sha1(relative.encode()).hexdigest()[:24]


def crop_key(user_id: str, image_id: str, face_id: str) -> str:
    """Where a face's aligned crop lives in FACE_GROUP_BUCKET_NAME (stable: reruns overwrite)."""
    return f"{FACES_PREFIX}/{user_id}/{image_id}/{face_id}.jpg"


def cover_key(user_id: str, person_id: int, crop_key: str) -> str:
    """Where a person's cover crop is copied: one stable key per person, overwritten on change."""
    extension = crop_key.rsplit(".", 1)[-1] if "." in crop_key.rsplit("/", 1)[-1] else "jpg"
    return f"{PEOPLE_PREFIX}/{user_id}/{person_id:06d}.{extension}"
