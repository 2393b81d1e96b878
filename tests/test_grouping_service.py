"""The grouping service on the shared consumer, against the moto server and nx-27017."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from facefleet.common.documents import encode_time
from facefleet.common.messages import GroupingRequest
from facefleet.common.metrics import MetricsEmitter
from facefleet.worker.grouping.corrections import Corrections
from facefleet.worker.runtime.consumer import ReceivedMessage
from facefleet.worker.runtime.outcome import Outcome
from tests.grouping_service_helpers import (
    Gallery,
    Identities,
    Setup,
    by_identity,
    make_setup,
    people,
    store_for,
)
from tests.sqs_helpers import counts, receive_all, send


@pytest.fixture
def setup(env, monkeypatch) -> Setup:
    return make_setup(env, monkeypatch, max_receive_count=1)


def gallery(setup: Setup, user_id: str = "alice", identities: int = 4) -> Gallery:
    return Gallery(setup.env, user_id, setup.bucket, Identities(identities))


def assert_one_person_per_identity(g: Gallery) -> dict[int, int]:
    """Every identity's faces sit in exactly one person, a different one per identity."""
    stored = people(g.env, g.user_id)
    found = by_identity(g.truth, stored)
    assert all(len(p) == 1 for p in found.values()), found
    owner = {identity: next(iter(p)) for identity, p in found.items()}
    assert len(set(owner.values())) == len(owner)
    for identity, person in owner.items():
        expected = {f for f, i in g.truth.items() if i == identity}
        assert stored[person]["members"] == expected
    return owner


def test_requests_become_people_with_covers_and_metrics(setup: Setup) -> None:
    g = gallery(setup)
    first = g.photos("a", 3, range(4))
    g.add_photo("group1", [0, 1, 2])  # one photo, three people: never one person
    second = g.photos("b", 2, range(4))
    setup.request("alice", first[:6])
    setup.request("alice", [*first[6:], "group1"])
    setup.request("alice", second)
    stream = io.StringIO()
    service = setup.service(MetricsEmitter("FaceFleet", {"Service": "grouping"}, stream=stream))

    assert setup.consume(service) == 0

    assert counts(setup.env, setup.queue.url) == (0, 0)
    owner = assert_one_person_per_identity(g)
    assert len(owner) == 4
    stored = people(setup.env, "alice")
    s3 = setup.env.aws.client("s3")
    for person in stored.values():
        assert person["cover"] in person["members"]
        assert person["cover_key"].startswith("people/alice/")
        assert s3.get_object(Bucket=setup.bucket, Key=person["cover_key"])["Body"].read()
    emitted = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert sum(e["FacesGrouped"] for e in emitted) == len(g.truth)
    assert sum(e["PeopleCreated"] for e in emitted) == 4
    assert all("GroupingTimeMs" in e for e in emitted)


def test_redelivery_and_restart_change_nothing(setup: Setup) -> None:
    g = gallery(setup)
    image_ids = g.photos("a", 3, range(4))
    setup.request("alice", image_ids)
    service = setup.service()
    setup.consume(service)
    before = people(setup.env, "alice")
    revision = store_for(setup.env).user_doc("alice")

    setup.request("alice", image_ids)  # the same request again: cached state
    setup.consume(service)
    setup.request("alice", image_ids[:5])  # and on a fresh process: state rebuilt from MongoDB
    setup.consume(setup.service())

    assert people(setup.env, "alice") == before

    # A write cut short (assignments stored, a person document not): the redelivery repairs it.
    store_for(setup.env).people.people.delete_one({"person_id": min(before)})
    setup.request("alice", image_ids[:1])
    setup.consume(setup.service())
    assert people(setup.env, "alice") == before
    after = store_for(setup.env).user_doc("alice")
    assert after is not None and revision is not None
    assert after["next_person_id"] == revision["next_person_id"]
    assert counts(setup.env, setup.queue.url) == (0, 0)


def test_second_batch_grows_people_and_keeps_names(setup: Setup) -> None:
    g = gallery(setup)
    setup.request("alice", g.photos("a", 3, range(3)))
    service = setup.service()
    setup.consume(service)
    owner = assert_one_person_per_identity(g)
    store = store_for(setup.env)
    named = owner[1]
    Corrections(store, s3=service.s3, bucket=setup.bucket).name("alice", named, "Bob")

    # New photos of the same people and of a new one, on the cached service and a fresh one.
    setup.request("alice", g.photos("b", 2, range(4)))
    setup.consume(service)
    setup.request("alice", g.photos("c", 2, range(4)))
    setup.consume(setup.service())

    after = assert_one_person_per_identity(g)
    assert {i: after[i] for i in range(3)} == owner  # same person ids: nobody renamed
    stored = people(setup.env, "alice")
    assert stored[named]["name"] == "Bob"
    assert len(stored[named]["members"]) == 7
    assert len(stored) == 4


def test_a_held_lease_retries_and_an_expired_one_is_taken_over(setup: Setup) -> None:
    g = gallery(setup, identities=2)
    image_ids = g.photos("a", 2, range(2))
    store = store_for(setup.env)
    store.people.acquire_lease("alice", "other-worker", timedelta(minutes=5))
    service = setup.service()
    body = GroupingRequest("alice", tuple(image_ids)).to_body()
    batch = [
        ReceivedMessage("m1", "r1", body),
        ReceivedMessage("m2", "r2", GroupingRequest("bob", ("x1",)).to_body()),
    ]

    outcomes = service.handle(batch)

    assert outcomes == {"m1": Outcome.DEFER, "m2": Outcome.DONE}  # bob is not held up
    assert people(setup.env, "alice") == {}
    # The other worker died: its lease expires and this worker takes the user over.
    past = datetime.now(UTC) - timedelta(seconds=1)
    store.people.leases.update_one({"_id": "alice"}, {"$set": {"expires_at": encode_time(past)}})
    assert service.handle(batch[:1]) == {"m1": Outcome.DONE}
    assert len(people(setup.env, "alice")) == 2
    released = store.people.leases.find_one({"_id": "alice"})
    assert released["owner"] is None and released["expires_at"] == 0  # released after the work


def test_malformed_requests_go_to_the_dead_letter_queue(setup: Setup) -> None:
    g = gallery(setup, identities=2)
    setup.request("alice", g.photos("a", 2, range(2)))
    send(setup.env, setup.queue.url, "not json")
    send(
        setup.env,
        setup.queue.url,
        json.dumps({"type": "group", "version": 1, "user_id": "alice", "image_ids": "a00x00"}),
    )

    assert setup.consume(setup.service()) == 0

    dead = sorted(m["Body"] for m in receive_all(setup.env, setup.queue.dlq_url))
    assert len(dead) == 2 and dead[0] == "not json"
    assert len(people(setup.env, "alice")) == 2


def test_reprocessed_and_fresh_faces_group_together(setup: Setup) -> None:
    """Reprocessing an image (a SIGKILL redelivery, a duplicate S3 event, a re-upload) rewrites
    its faces with `$set` updates. nx-27017 once stored their `created_at` as a string, and the
    first grouping of a user mixing fresh and reprocessed faces raised TypeError: the whole
    batch went to the DLQ, and a redrive failed again."""
    g = gallery(setup, identities=3)
    first = g.photos("a", 2, range(3))
    for image_id in first[:3]:  # reprocessed, maybe several times
        for _ in range(2):
            g.add_photo(
                image_id,
                [
                    g.truth[f.doc_id]
                    for f in g.repo().gallery.faces_of_images(g.user_id, [image_id])
                ],
            )
    fresh = g.photos("b", 1, range(3))
    setup.request(g.user_id, first + fresh)
    assert setup.consume(setup.service()) == 0
    assert counts(setup.env, setup.queue.url) == (0, 0)
    assert receive_all(setup.env, setup.queue.dlq_url) == []
    grouped = people(setup.env, g.user_id)
    members = set().union(*(p["members"] for p in grouped.values()))
    assert members == {f.doc_id for f in g.repo().gallery.faces_of_user(g.user_id)}
