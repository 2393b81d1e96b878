"""The detection service: the indexing-queue handler on the shared consumer loop, and `main()`.

Per message batch (`pipeline.run_pipeline`): MAX_FACE_WORKERS threads download and decode every
image while the inference streams detect and embed the images already decoded (on a GPU:
detection in batches, then one recognition pass over all faces of the batch). Each photo version
is stored by `privacy.photos.store_version` (deterministic face ids per version, a
compare-and-set on the image document ordered by the create's event order, the image DONE only
after its faces; an edit over the same key replaces the old version's faces), crops go to
FACE_GROUP_BUCKET_NAME, then per user of the batch a `ForgetRequest` for replaced versions and
one `GroupingRequest` go to GROUP_FACE_QUEUE_URL. Only then is a message DONE.

Bad input never blocks the queue:
- malformed body                     -> MALFORMED: redelivered until maxReceiveCount, then the DLQ;
- missing, empty, corrupt, unsupported, oversized, too small, or any unexpected error on one
  image                              -> image marked FAILED with the reason, message deleted;
- MongoDB / S3 / SQS outage           -> RETRY: kept in flight, retried with backoff, never lost.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from botocore.exceptions import ClientError

from facefleet.common.config import Settings, load_service_settings
from facefleet.common.documents import FaceDoc, ImageDoc, ImageStatus, face_doc_id
from facefleet.common.logs import configure_logging
from facefleet.common.messages import (
    DeleteRequest,
    DetectionRequest,
    ErasureRequest,
    ForgetRequest,
    GroupingRequest,
    MalformedMessage,
    parse_indexing_message,
)
from facefleet.common.metrics import Metric, MetricsEmitter
from facefleet.common.privacy import PrivacyRepository
from facefleet.common.repository import GALLERY_DEFAULT_DB, GalleryRepository, connect
from facefleet.common.s3keys import crop_key
from facefleet.worker.consumer import (
    ConsumerConfig,
    Outcome,
    ReceivedMessage,
    batch_job_context,
    is_outage,
    serve,
)
from facefleet.worker.detection.analyzer import DetectedFace, FaceAnalyzer, LocatedFace
from facefleet.worker.detection.imaging import (
    DecodedImage,
    FailureReason,
    ImageError,
    decode_image,
    describe_error,
)
from facefleet.worker.detection.pipeline import PipelineResult, StageClock, run_pipeline
from facefleet.worker.models import resolve_pack_dir
from facefleet.worker.privacy.activity import ActivityRepository, upload_times
from facefleet.worker.privacy.consent import REASONS, Recognition, recognition_of
from facefleet.worker.privacy.photos import (
    FaultHook,
    StoreResult,
    delete_photo,
    remove_faces,
    remove_faces_before,
    store_version,
)

log = logging.getLogger(__name__)

__all__ = ["DetectionService", "PipelineResult", "crop_key", "main", "run_pipeline"]
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
# The job role may list the gallery bucket, so S3 says NoSuchKey for a missing photo; a denial is
# then a permission problem of the deployment, not of the photo: the message is kept (RETRY,
# then the DLQ) instead of the photo being marked failed.
_DENIED_CODES = frozenset({"AccessDenied", "403"})


def _denied(error: BaseException) -> bool:
    return isinstance(error, ClientError) and (
        str(error.response.get("Error", {}).get("Code", "")) in _DENIED_CODES
    )


CROP_JPEG_QUALITY = 92


@dataclass
class ImageWork:
    """One image of a batch on its way through the pipeline."""

    request: DetectionRequest
    message_id: str
    clock: StageClock | None = None  # set by the pipeline, the one owner of the image's timings
    decoded: DecodedImage | None = None
    located: list[LocatedFace] = field(default_factory=list)
    faces: list[DetectedFace] = field(default_factory=list)
    failure: ImageError | None = None
    outage: BaseException | None = None
    error: BaseException | None = None
    # The photo version read (S3 version id, else ETag) and what storing it did.
    version: str | None = None
    result: StoreResult | None = None


class DetectionService:
    """The batch handler: `handle(batch) -> {message_id: Outcome}` for `consumer.serve`."""

    def __init__(
        self,
        settings: Settings,
        analyzer: FaceAnalyzer,
        repository: GalleryRepository,
        *,
        s3: Any,
        sqs: Any,
        metrics: MetricsEmitter,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        settings.require("group_face_queue_url", "face_group_bucket_name")
        self.settings = settings
        self.analyzer = analyzer
        self.repository = repository
        self.s3 = s3
        self.sqs = sqs
        self.metrics = metrics
        self.privacy = PrivacyRepository(repository.faces.database)
        self.activity = ActivityRepository(repository.faces.database)  # retention's clock
        self.fault: FaultHook | None = None  # test hook: fault injection before each write
        self.executor = executor or ThreadPoolExecutor(
            max_workers=settings.max_face_workers, thread_name_prefix="fetch"
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, analyzer: FaceAnalyzer | None = None
    ) -> DetectionService:
        assert settings.gallery_images_mongo_uri is not None
        if analyzer is None:
            analyzer = FaceAnalyzer.from_pack(
                resolve_pack_dir(settings),
                det_size=settings.detection_size,
                det_threshold=settings.detection_threshold,
                rec_batch_size=settings.rec_batch_size or None,
            )
        repository = GalleryRepository(
            connect(settings.gallery_images_mongo_uri, GALLERY_DEFAULT_DB)
        )
        repository.ensure_indexes()
        metrics = MetricsEmitter(
            settings.metrics_namespace,
            {"Service": "detection"},
            cloudwatch=settings.aws if settings.metrics_to_cloudwatch else None,
        )
        return cls(
            settings,
            analyzer,
            repository,
            s3=settings.aws.client("s3"),
            sqs=settings.aws.client("sqs"),
            metrics=metrics,
        )

    # -- the handler ----------------------------------------------------------------------------
    def handle(self, batch: list[ReceivedMessage]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        works: list[ImageWork] = []
        deletes: list[tuple[str, DeleteRequest]] = []
        for message in batch:
            try:
                requests = parse_indexing_message(message.body)
            except MalformedMessage as error:
                log.error(
                    "malformed message",
                    extra={
                        "message_id": message.message_id,
                        "error": str(error),
                        "receive_count": message.receive_count,
                    },
                )
                outcomes[message.message_id] = Outcome.MALFORMED
                continue
            outcomes[message.message_id] = Outcome.DONE
            for request in requests:
                if isinstance(request, DeleteRequest):
                    deletes.append((message.message_id, request))
                else:
                    works.append(ImageWork(request, message.message_id))
        # Deletes first: a create of the same batch is then checked against their tombstones.
        for message_id, outcome in self._delete_photos(deletes).items():
            outcomes[message_id] = _worse(outcomes[message_id], outcome)
        works = self._screen(works, outcomes)
        if not works:
            return outcomes

        results = run_pipeline(self.analyzer, works, self._fetch, self.executor)
        for work, result in zip(works, results, strict=True):
            work.clock = result.clock
            work.decoded, work.faces = result.decoded, result.faces
            problem = result.error
            if isinstance(problem, ImageError):
                work.failure = problem
            elif problem is not None and (is_outage(problem) or _denied(problem)):
                work.outage = problem
            elif problem is not None:
                work.error = problem

        stored: dict[str, list[str]] = defaultdict(list)  # user -> image ids with new faces
        replaced: dict[str, list[str]] = defaultdict(list)  # user -> images with faces gone
        for work in works:
            outcome = self._store(work)
            if outcome is not Outcome.DONE:
                outcomes[work.message_id] = _worse(outcomes[work.message_id], outcome)
                continue
            stored_as = work.result
            if stored_as is not None and stored_as.replaced:
                replaced[work.request.user_id].append(work.request.image_id)
            # The same bytes again are asked again too: a crash after the store and before this
            # request must not leave faces ungrouped (grouping skips what it placed already).
            if stored_as is not None and stored_as.stored and work.faces and not work.failure:
                stored[work.request.user_id].append(work.request.image_id)
        for work in self._overtaken(works, stored, replaced):
            outcomes[work.message_id] = _worse(outcomes[work.message_id], Outcome.RETRY)

        users = set(stored) | set(replaced)
        if users and not self._request_grouping(stored, replaced):
            # Grouping must hear about these images: redo the (idempotent) batch later.
            for work in works:
                if work.request.user_id in users:
                    outcomes[work.message_id] = _worse(outcomes[work.message_id], Outcome.RETRY)
        return outcomes

    # -- privacy: deleted photos, erased users, face recognition off ----------------------------

    def _delete_photos(self, deletes: list[tuple[str, DeleteRequest]]) -> dict[str, Outcome]:
        """Tombstone, crops and faces of each deleted photo; then one `ForgetRequest` per user
        to the grouping worker, then the image documents. Unknown photos are a no-op (DONE)."""
        outcomes: dict[str, Outcome] = {}
        forget: dict[str, list[tuple[str, DeleteRequest]]] = defaultdict(list)
        bucket = self.settings.face_group_bucket_name
        assert bucket is not None
        for message_id, request in deletes:
            context = {"user_id": request.user_id, "image_id": request.image_id}
            try:
                result = delete_photo(self.repository, self.privacy, self.s3, bucket, request)
            except Exception as error:
                if not is_outage(error):
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
            try:
                self.sqs.send_message(
                    QueueUrl=self.settings.group_face_queue_url,
                    MessageBody=ForgetRequest(user_id, image_ids).to_body(),
                )
                for _, request in items:
                    # Unless a later create holds it (a compare-and-set on its order).
                    self._point("drop-image")
                    self.repository.drop_image(user_id, request.image_id, request.order)
            except Exception as error:
                if not is_outage(error):
                    raise
                log.warning("forget request not sent", extra={"user_id": user_id})
                for message_id, _ in items:
                    outcomes[message_id] = Outcome.RETRY
        return outcomes

    def _screen(self, works: list[ImageWork], outcomes: dict[str, Outcome]) -> list[ImageWork]:
        """Drop creates a deletion or erasure overtook; mark the images of users with face
        recognition off processed (no faces, no embeddings, nothing sent to grouping)."""
        if not works:
            return works
        try:
            blocked = self.privacy.blocked(w.request for w in works)
            users = [w.request.user_id for w in works]
            recognition = recognition_of(
                self.privacy, self.settings.face_recognition_consent, users
            )
            self.activity.touch(upload_times(w.request for w in works))
        except Exception as error:
            if not is_outage(error):
                raise
            for work in works:
                outcomes[work.message_id] = _worse(outcomes[work.message_id], Outcome.RETRY)
            return []
        kept: list[ImageWork] = []
        opted_out: set[str] = set()
        for position, work in enumerate(works):
            request = work.request
            context = {"user_id": request.user_id, "image_id": request.image_id}
            why = blocked[position]
            try:
                if why is not None:
                    log.info("create skipped: " + why, extra=context)
                elif recognition[request.user_id] is not Recognition.ON:
                    image = self._image_doc(work)
                    image.reason = REASONS[recognition[request.user_id]]
                    bucket = self.settings.face_group_bucket_name
                    assert bucket is not None
                    store_version(self.repository, self.s3, bucket, image, [], lambda _: None)
                    if recognition[request.user_id] is Recognition.OFF:
                        opted_out.add(request.user_id)
                    log.info(f"not indexed: {image.reason}", extra=context)
                else:
                    kept.append(work)
            except Exception as error:
                if not is_outage(error):
                    raise
                outcomes[work.message_id] = _worse(outcomes[work.message_id], Outcome.RETRY)
        for user_id in sorted(opted_out):
            self._erase_if_needed(user_id)
        return kept

    def _erase_if_needed(self, user_id: str) -> None:
        """Switching face recognition off erases what is left: the grouping worker does it."""
        try:
            if not self.repository.has_faces(user_id):
                return
            body = ErasureRequest(user_id, reason="opt_out").to_body()
            self.sqs.send_message(QueueUrl=self.settings.group_face_queue_url, MessageBody=body)
        except Exception as error:
            if not is_outage(error):
                raise
            log.warning("opt-out erasure not requested", extra={"user_id": user_id})

    def _overtaken(
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
        try:
            blocked = self.privacy.blocked(w.request for w in done)
        except Exception as error:
            if not is_outage(error):
                raise
            return done
        bucket = self.settings.face_group_bucket_name
        assert bucket is not None
        for work, why in zip(done, blocked, strict=True):
            request = work.request
            if why is None:
                continue
            try:
                if why == "user erased":
                    remove_faces(
                        self.repository, self.s3, bucket, request.user_id, [request.image_id]
                    )
                    self.repository.drop_image(request.user_id, request.image_id, request.order)
                else:
                    deleted = self.privacy.deletion_of(request.user_id, request.image_id)
                    assert deleted is not None
                    remove_faces_before(
                        self.repository, self.s3, bucket, request.user_id, request.image_id, deleted
                    )
                    self.repository.drop_image(request.user_id, request.image_id, deleted)
            except Exception as error:
                if not is_outage(error):
                    raise
                failed.append(work)
            stored[request.user_id].remove(request.image_id)
            if not stored[request.user_id]:
                del stored[request.user_id]
            log.info(
                "faces removed again: the photo was deleted meanwhile",
                extra={"user_id": request.user_id, "image_id": request.image_id},
            )
        return failed

    def _fetch(self, work: ImageWork, clock: StageClock) -> DecodedImage:
        request = work.request
        started = time.perf_counter()
        try:
            response = self.s3.get_object(Bucket=request.bucket, Key=request.key)
            work.version = _version_of(response)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise ImageError(
                    FailureReason.MISSING, f"s3://{request.bucket}/{request.key}: {code}"
                ) from None
            raise
        body = response["Body"]
        try:
            length = int(response.get("ContentLength", 0))
            if length > self.settings.max_image_bytes:
                raise ImageError(
                    FailureReason.TOO_LARGE,
                    f"{length} bytes exceeds MAX_IMAGE_BYTES={self.settings.max_image_bytes}",
                )
            data = body.read()
        finally:
            body.close()
        clock.record("download", started)
        started = time.perf_counter()
        decoded = decode_image(
            data,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.settings.max_image_bytes,
            max_side=2 * self.settings.detection_size,
        )
        clock.record("decode", started)
        return decoded

    def _image_doc(self, work: ImageWork) -> ImageDoc:
        request = work.request
        decoded = work.decoded
        return ImageDoc(
            user_id=request.user_id,
            image_id=request.image_id,
            bucket=request.bucket,
            key=request.key,
            status=ImageStatus.PROCESSING,
            model_id=self.analyzer.model_id,
            width=decoded.width if decoded else None,
            height=decoded.height if decoded else None,
            timings_ms=work.clock.timings_ms() if work.clock else {},
            requested_at=request.requested_at,
            sequencer=request.sequencer,
            version=work.version,
        )

    def _point(self, step: str) -> None:
        if self.fault is not None:
            self.fault(step)

    def _store(self, work: ImageWork) -> Outcome:
        request = work.request
        context = {
            "user_id": request.user_id,
            "image_id": request.image_id,
            "key": request.key,
            "message_id": work.message_id,
        }
        if work.outage is not None:
            log.warning(
                "outage while fetching the image", extra={**context, "error": repr(work.outage)}
            )
            return Outcome.RETRY
        if work.error is not None:
            log.error("unexpected error on the image", exc_info=work.error, extra=context)
            work.failure = _processing_error(work.error)
        started = time.perf_counter()
        image = self._image_doc(work)
        try:
            if work.failure is not None:
                return self._fail(work, image, work.failure, context)
            faces = self._face_docs(work)
            if work.clock is not None:
                # The total is the image's elapsed wall time, not a sum of its stages.
                work.clock.record("store", started)
                image.timings_ms = work.clock.timings_ms()
            bucket = self.settings.face_group_bucket_name
            assert bucket is not None
            work.result = store_version(
                self.repository,
                self.s3,
                bucket,
                image,
                faces,
                lambda docs: self._upload_crops(docs, work),
                fault=self.fault,
            )
        except Exception as error:
            if is_outage(error):
                log.warning(
                    "outage while storing the image", extra={**context, "error": repr(error)}
                )
                return Outcome.RETRY
            log.error("storing the image failed", exc_info=True, extra=context)
            try:
                return self._fail(work, image, _processing_error(error), context)
            except Exception as again:
                if is_outage(again):
                    return Outcome.RETRY
                raise
        total_ms = image.timings_ms.get("total", 0.0)
        log.info(
            "image processed",
            extra={**context, "faces": len(faces), "timings_ms": image.timings_ms},
        )
        self.metrics.emit(
            {
                Metric.IMAGES_PROCESSED: 1,
                Metric.FACES_DETECTED: len(faces),
                Metric.PROCESSING_TIME: total_ms,
            },
            **context,
        )
        return Outcome.DONE

    def _fail(
        self, work: ImageWork, image: ImageDoc, failure: ImageError, context: dict[str, str]
    ) -> Outcome:
        """Every image that cannot be processed ends `failed` with its reason (then DONE),
        unless a later create or delete of the photo is stored already."""
        image.reason = str(failure)
        bucket = self.settings.face_group_bucket_name
        assert bucket is not None
        work.result = store_version(
            self.repository,
            self.s3,
            bucket,
            image,
            [],
            lambda docs: None,
            status=ImageStatus.FAILED,
            fault=self.fault,
        )
        log.warning(
            "image failed", extra={**context, "reason": failure.reason, "detail": failure.detail}
        )
        self.metrics.emit({Metric.IMAGES_FAILED: 1}, reason=str(failure.reason), **context)
        return Outcome.DONE

    def _face_docs(self, work: ImageWork) -> list[FaceDoc]:
        request, decoded = work.request, work.decoded
        assert decoded is not None
        back = 1.0 / decoded.scale  # to the original image's pixels
        docs = []
        for index, face in enumerate(work.faces):
            face_id = face_doc_id(
                request.user_id, request.image_id, self.analyzer.model_id, index, work.version
            )
            docs.append(
                FaceDoc(
                    user_id=request.user_id,
                    image_id=request.image_id,
                    model_id=self.analyzer.model_id,
                    index=index,
                    bbox=tuple(float(v) * back for v in face.bbox),  # type: ignore[arg-type]
                    landmarks=tuple((float(x) * back, float(y) * back) for x, y in face.landmarks),
                    det_score=face.det_score,
                    quality=face.quality,
                    embedding=np.asarray(face.embedding, dtype=np.float32),
                    embedding_norm=face.embedding_norm,
                    crop_key=crop_key(request.user_id, request.image_id, face_id)
                    if face.crop is not None
                    else None,
                    version=work.version,
                )
            )
        return docs

    def _upload_crops(self, faces: list[FaceDoc], work: ImageWork) -> None:
        bucket = self.settings.face_group_bucket_name
        uploads = []
        for doc, face in zip(faces, work.faces, strict=True):
            if face.crop is None or doc.crop_key is None:
                continue
            ok, encoded = cv2.imencode(
                ".jpg", face.crop, [cv2.IMWRITE_JPEG_QUALITY, CROP_JPEG_QUALITY]
            )
            if not ok:
                raise RuntimeError(f"cannot encode the crop of face {doc.doc_id}")
            uploads.append(
                self.executor.submit(
                    self.s3.put_object,
                    Bucket=bucket,
                    Key=doc.crop_key,
                    Body=encoded.tobytes(),
                    ContentType="image/jpeg",
                )
            )
        for upload in uploads:
            upload.result()  # an outage surfaces here, before the image turns DONE

    def _request_grouping(
        self, stored: Mapping[str, list[str]], replaced: Mapping[str, list[str]]
    ) -> bool:
        """Per user: a forget for photos whose older version's faces went, then a grouping
        request for the new faces."""
        bodies = [
            ForgetRequest(user_id, tuple(sorted(set(image_ids)))).to_body()
            for user_id, image_ids in replaced.items()
            if image_ids
        ] + [
            GroupingRequest(user_id, tuple(sorted(set(image_ids)))).to_body()
            for user_id, image_ids in stored.items()
            if image_ids
        ]
        for body in bodies:
            user_id = json.loads(body)["user_id"]
            try:
                self.sqs.send_message(QueueUrl=self.settings.group_face_queue_url, MessageBody=body)
            except Exception as error:
                if not is_outage(error):
                    raise
                log.warning(
                    "grouping request not sent", extra={"user_id": user_id, "error": repr(error)}
                )
                return False
        return True

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _processing_error(error: BaseException) -> ImageError:
    """An unexpected per-image error as the image's failure reason (the log has the trace)."""
    return ImageError(
        FailureReason.PROCESSING_ERROR,
        f"the image could not be processed ({type(error).__name__}: {describe_error(error)})",
    )


_SEVERITY = {Outcome.DONE: 0, Outcome.MALFORMED: 1, Outcome.DEFER: 2, Outcome.RETRY: 3}


def _version_of(response: Mapping[str, Any]) -> str | None:
    """The photo version read: S3's version id on a versioned bucket, else the ETag (a digest
    of the bytes: the same bytes saved again are the same version)."""
    version_id = response.get("VersionId")
    if version_id and version_id != "null":
        return f"v:{version_id}"
    etag = str(response.get("ETag") or "").strip('"')
    return f"e:{etag}" if etag else None


def _worse(current: Outcome, new: Outcome) -> Outcome:
    """A message with several images: an outage on any keeps it (RETRY beats MALFORMED)."""
    return new if _SEVERITY[new] > _SEVERITY[current] else current


def main() -> int:
    """Entry point of `python3 run_detection_service.py` (the Batch job's command)."""
    configure_logging("detection")
    settings = load_service_settings("detection")
    log.info("detection service starting", extra=batch_job_context(settings))
    service = DetectionService.from_settings(settings)
    config = ConsumerConfig.from_settings(settings, settings.queue_url)
    return serve(
        config,
        service.handle,
        service="detection",
        settings=settings,
        metrics=service.metrics,
        on_exit=service.close,
    )


if __name__ == "__main__":
    sys.exit(main())
