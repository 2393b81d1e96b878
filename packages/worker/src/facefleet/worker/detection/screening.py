"""The detection handler's privacy steps: deleted photos, erased users, face recognition off,
and deletions that overtook a create while it was being stored. The rules themselves live in
`worker.privacy`; this module applies them to a batch and says which parts must be retried."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from facefleet.common.messages import DeleteRequest, DetectionRequest, ErasureRequest, ForgetRequest
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.repository import GalleryRepository
from facefleet.worker.detection.records import ImageWork, image_doc
from facefleet.worker.privacy.activity import ActivityRepository, upload_times
from facefleet.worker.privacy.consent import REASONS, Recognition, recognition_of
from facefleet.worker.privacy.photos import (
    FaultHook,
    delete_photo,
    remove_faces,
    remove_faces_before,
    store_version,
)
from facefleet.worker.runtime.outcome import OutageGuard, Outcome, classify, worse

log = logging.getLogger(__name__)


class PrivacyScreen:
    """Privacy for one detection worker: its stores, the crops bucket, the grouping queue."""

    def __init__(
        self,
        repository: GalleryRepository,
        *,
        s3: Any,
        sqs: Any,
        bucket: str,
        group_queue_url: str,
        consent_default: str,
        model_id: str,
    ) -> None:
        self.repository = repository
        self.privacy = PrivacyRepository(repository.faces.database)
        self.activity = ActivityRepository(repository.faces.database)  # retention's clock
        self.s3, self.sqs = s3, sqs
        self.bucket = bucket
        self.group_queue_url = group_queue_url
        self.consent_default = consent_default
        self.model_id = model_id
        self.fault: FaultHook | None = None  # test hook: fault injection before each write

    def _point(self, step: str) -> None:
        if self.fault is not None:
            self.fault(step)

    def delete_photos(self, deletes: list[tuple[str, DeleteRequest]]) -> dict[str, Outcome]:
        """Tombstone, crops and faces of each deleted photo; then one `ForgetRequest` per user
        to the grouping worker, then the image documents. Unknown photos are a no-op (DONE)."""
        outcomes: dict[str, Outcome] = {}
        forget: dict[str, list[tuple[str, DeleteRequest]]] = defaultdict(list)
        for message_id, request in deletes:
            context = {"user_id": request.user_id, "image_id": request.image_id}
            try:
                result = delete_photo(self.repository, self.privacy, self.s3, self.bucket, request)
            except Exception as error:
                # Any failure keeps the delete (a delete is never dead-lettered unseen).
                if classify(error) is not Outcome.RETRY:
                    log.error("deleting the photo failed", exc_info=True, extra=context)
                outcomes[message_id] = Outcome.RETRY
                continue
            log.info(
                "photo deleted" if not result.stale else "delete older than the photo: ignored",
                extra={**context, "faces": result.faces, "crops": result.crops},
            )
            outcomes[message_id] = Outcome.DONE
            if result.known and not result.stale:
                forget[request.user_id].append((message_id, request))
        for user_id, items in forget.items():
            image_ids = tuple(sorted({request.image_id for _, request in items}))
            with OutageGuard() as guard:
                self.sqs.send_message(
                    QueueUrl=self.group_queue_url,
                    MessageBody=ForgetRequest(user_id, image_ids).to_body(),
                )
                for _, request in items:
                    # Unless a later create holds it (a compare-and-set on its order).
                    self._point("drop-image")
                    self.repository.drop_image(user_id, request.image_id, request.order)
            if guard.hit:
                log.warning("forget request not sent", extra={"user_id": user_id})
                for message_id, _ in items:
                    outcomes[message_id] = Outcome.RETRY
        return outcomes

    def screen(self, works: list[ImageWork], outcomes: dict[str, Outcome]) -> list[ImageWork]:
        """Drop creates a deletion or erasure overtook; mark the images of users with face
        recognition off processed (no faces, no embeddings, nothing sent to grouping)."""
        if not works:
            return works
        with OutageGuard() as guard:
            blocked = self.privacy.blocked(w.request for w in works)
            users = [w.request.user_id for w in works]
            recognition = recognition_of(self.privacy, self.consent_default, users)
            self.activity.touch(upload_times(w.request for w in works))
        if guard.hit:
            for work in works:
                outcomes[work.message_id] = worse(outcomes[work.message_id], Outcome.RETRY)
            return []
        kept: list[ImageWork] = []
        opted_out: set[str] = set()
        for position, work in enumerate(works):
            request = work.request
            context = {"user_id": request.user_id, "image_id": request.image_id}
            why = blocked[position]
            with OutageGuard() as guard:
                if why is not None:
                    log.info("create skipped: " + why, extra=context)
                elif recognition[request.user_id] is not Recognition.ON:
                    image = image_doc(work, self.model_id)
                    image.reason = REASONS[recognition[request.user_id]]
                    store_version(self.repository, self.s3, self.bucket, image, [], lambda _: None)
                    if recognition[request.user_id] is Recognition.OFF:
                        opted_out.add(request.user_id)
                    log.info(f"not indexed: {image.reason}", extra=context)
                else:
                    kept.append(work)
            if guard.hit:
                outcomes[work.message_id] = worse(outcomes[work.message_id], Outcome.RETRY)
        for user_id in sorted(opted_out):
            self._erase_if_needed(user_id)
        return kept

    def _erase_if_needed(self, user_id: str) -> None:
        """Switching face recognition off erases what is left: the grouping worker does it."""
        with OutageGuard() as guard:
            if not self.repository.has_faces(user_id):
                return
            body = ErasureRequest(user_id, reason="opt_out").to_body()
            self.sqs.send_message(QueueUrl=self.group_queue_url, MessageBody=body)
        if guard.hit:
            log.warning("opt-out erasure not requested", extra={"user_id": user_id})

    def overtaken(
        self,
        works: list[ImageWork],
        stored: dict[str, list[str]],
        replaced: dict[str, list[str]],
    ) -> list[ImageWork]:
        """After storing: a delete or erasure that arrived meanwhile wins. Its tombstone was
        written before it removed faces, and these faces were written before this check, so one
        of the two always sees the other. Only what the delete covers goes (faces of creates
        not later than it): a newer version stored by another worker stays. Returns works
        whose removal met an outage."""
        done = [w for w in works if w.request.image_id in stored.get(w.request.user_id, ())]
        if not done:
            return []
        failed: list[ImageWork] = []
        with OutageGuard() as guard:
            blocked = self.privacy.blocked(w.request for w in done)
        if guard.hit:
            return done
        for work, why in zip(done, blocked, strict=True):
            request = work.request
            if why is None:
                continue
            with OutageGuard() as guard:
                self._remove_again(request, erased=why == "user erased")
            if guard.hit:
                failed.append(work)
            stored[request.user_id].remove(request.image_id)
            if not stored[request.user_id]:
                del stored[request.user_id]
            log.info(
                "faces removed again: the photo was deleted meanwhile",
                extra={"user_id": request.user_id, "image_id": request.image_id},
            )
        return failed

    def _remove_again(self, request: DetectionRequest, *, erased: bool) -> None:
        user_id, image_id = request.user_id, request.image_id
        if erased:
            remove_faces(self.repository, self.s3, self.bucket, user_id, [image_id])
            self.repository.drop_image(user_id, image_id, request.order)
        else:
            deleted = self.privacy.deletion_of(user_id, image_id)
            assert deleted is not None
            remove_faces_before(self.repository, self.s3, self.bucket, user_id, image_id, deleted)
            self.repository.drop_image(user_id, image_id, deleted)
