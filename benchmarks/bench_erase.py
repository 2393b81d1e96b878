"""Time to erase one user with N faces (default 10,000) on the local stack, and the receipt.

Starts its own moto server and nx-27017 (`facefleet.embedded.servers`), writes a synthetic
user as the workers would leave it: one photo per face (image and face documents with 128-d
embeddings), a crop per face in the face-group bucket, an assignment per face, people of about
20 faces each with a cover object, a grouping user document and a correction; another user of
1,000 faces stays untouched. Then `erase_user` runs twice (the second finds nothing). The last
line is `RESULT erase_s=.. faces=.. second_run_s=..`.

    .venv/bin/python benchmarks/bench_erase.py               # 10,000 faces
    .venv/bin/python benchmarks/bench_erase.py --faces 2000  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from facefleet.common.aws import AwsTarget
from facefleet.common.documents import FaceDoc, ImageDoc, ImageStatus, PersonDoc
from facefleet.common.repository import GALLERY_DEFAULT_DB, HUEMN_DEFAULT_DB, connect
from facefleet.common.s3keys import cover_key, crop_key, image_key
from facefleet.embedded import servers as local
from facefleet.worker.grouping.store import GroupingStore
from facefleet.worker.privacy.erasure import erase_user

DIM = 128
PER_PERSON = 20
BUCKET = "bench-face-groups"


def populate(store: GroupingStore, s3: Any, user: str, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    faces, images, rows = [], [], []
    for i in range(count):
        image_id = f"img{i:06d}.jpg"
        face = FaceDoc(
            user,
            image_id,
            "m1",
            0,
            (0.0, 0.0, 100.0, 100.0),
            ((1.0, 1.0),) * 5,
            0.9,
            0.8,
            vectors[i],
            crop_key=None,
        )
        face.crop_key = crop_key(user, image_id, face.doc_id)
        faces.append(face)
        images.append(
            ImageDoc(
                user,
                image_id,
                "gallery",
                image_key(user, image_id),
                ImageStatus.DONE,
                model_id="m1",
                face_count=1,
            ).to_mongo()
        )
        rows.append(
            {
                "_id": face.doc_id,
                "user_id": user,
                "model_id": "m1",
                "seq": i,
                "image_id": image_id,
                "person_id": 1 + i // PER_PERSON,
                "pinned": False,
                "not_in": [],
            }
        )
    chunk = 1000
    for start in range(0, count, chunk):
        store.gallery.faces.insert_many([f.to_mongo() for f in faces[start : start + chunk]])
        store.gallery.images.insert_many(images[start : start + chunk])
        store.assignments.insert_many(rows[start : start + chunk])
    people = []
    for person in range(1, count // PER_PERSON + 1):
        members = faces[(person - 1) * PER_PERSON : person * PER_PERSON]
        key = cover_key(user, person, members[0].crop_key or "")
        people.append(
            PersonDoc(
                user,
                person,
                "m1",
                [m.doc_id for m in members],
                members[0].doc_id,
                members[0].embedding,
                cover_key=key,
            ).to_mongo()
        )
    store.people.people.insert_many(people)
    store.users.insert_one({"_id": user, "model_id": "m1", "revision": "r", "face_count": count})
    store.corrections.insert_one({"user_id": user, "op": "name", "args": {"person_id": 1}})
    keys = [f.crop_key for f in faces] + [p["cover_key"] for p in people]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=BUCKET, Key=k, Body=b"\xff\xd8crop"), keys))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=10_000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as state_dir,
        local.running(state_dir, ("moto", "mongo")) as stack,
    ):
        os.environ.update(local.LOCAL_AWS_ENV)
        aws = AwsTarget(local.LOCAL_AWS_ENV["AWS_DEFAULT_REGION"], stack.moto_url)
        s3 = aws.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        store = GroupingStore(
            connect(f"{stack.mongo_uri}/bench_gallery", GALLERY_DEFAULT_DB),
            connect(f"{stack.mongo_uri}/bench_huemn", HUEMN_DEFAULT_DB),
        )
        store.ensure_indexes()
        store.gallery.ensure_indexes()
        started = time.perf_counter()
        populate(store, s3, "erased", args.faces, 1)
        populate(store, s3, "kept", 1000, 2)
        print(f"populated {args.faces} + 1000 faces in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        receipt = erase_user(store, s3, BUCKET, "erased", owner="bench")
        erase_s = time.perf_counter() - started
        started = time.perf_counter()
        again = erase_user(store, s3, BUCKET, "erased", owner="bench")
        second_s = time.perf_counter() - started
        kept = store.gallery.count_faces("kept")
        print("receipt:", json.dumps(receipt.counts, sort_keys=True))
        print("second run:", json.dumps(again.counts, sort_keys=True))
        print(f"other user's faces kept: {kept}")
        print(f"RESULT erase_s={erase_s:.2f} faces={args.faces} second_run_s={second_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
