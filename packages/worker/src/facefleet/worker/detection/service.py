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

The parts: `fetch` (S3 read and decode), `records` (the image's documents and crops),
`screening` (privacy: deletes, erasures, consent), `runtime.outcome` (what an error means).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from facefleet.common.config import Settings, load_service_settings
from facefleet.common.documents import ImageDoc, ImageStatus
from facefleet.common.logs import configure_logging
from facefleet.common.messages import (
    DeleteRequest,
    ForgetRequest,
    GroupingRequest,
    MalformedMessage,
    parse_indexing_message,
)
from facefleet.common.metrics import Metric, MetricsEmitter
from facefleet.common.repository import GALLERY_DEFAULT_DB, GalleryRepository, connect
from facefleet.worker.detection.analyzer import FaceAnalyzer
from facefleet.worker.detection.fetch import (
    FetchLimits,
    denied,
    get_photo,
    read_and_decode,
    version_of,
)
from facefleet.worker.detection.imaging import DecodedImage, ImageError
from facefleet.worker.detection.pipeline import StageClock, run_pipeline
from facefleet.worker.detection.records import (
    ImageWork,
    face_docs,
    image_doc,
    processing_error,
    upload_crops,
)
from facefleet.worker.detection.screening import PrivacyScreen
from facefleet.worker.models import resolve_pack_dir
from facefleet.worker.privacy.photos import FaultHook, store_version
from facefleet.worker.runtime.consumer import ConsumerConfig, ReceivedMessage
from facefleet.worker.runtime.outcome import OutageGuard, Outcome, classify, worse
from facefleet.worker.runtime.serve import batch_job_context, serve

log = logging.getLogger(__name__)


class DetectionService:
    """The batch handler: `handle(batch) -> {message_id: Outcome}` for `runtime.serve`."""

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
        assert settings.face_group_bucket_name is not None
        assert settings.group_face_queue_url is not None
        self.settings = settings
        self.analyzer = analyzer
        self.repository = repository
        self.s3 = s3
        self.sqs = sqs
        self.metrics = metrics
        self.bucket: str = settings.face_group_bucket_name
        self.limits = FetchLimits(
            settings.max_image_bytes, settings.max_image_pixels, settings.detection_size
        )
        self.screen = PrivacyScreen(
            repository,
            s3=s3,
            sqs=sqs,
            bucket=self.bucket,
            group_queue_url=settings.group_face_queue_url,
            consent_default=settings.face_recognition_consent,
            model_id=analyzer.model_id,
        )
        self.executor = executor or ThreadPoolExecutor(
            max_workers=settings.max_face_workers, thread_name_prefix="fetch"
        )

    @property
    def fault(self) -> FaultHook | None:
        """Test hook: fault injection before each write (the stores and the privacy steps)."""
        return self.screen.fault

    @fault.setter
    def fault(self, hook: FaultHook | None) -> None:
        self.screen.fault = hook

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
        for message_id, outcome in self.screen.delete_photos(deletes).items():
            outcomes[message_id] = worse(outcomes[message_id], outcome)
        works = self.screen.screen(works, outcomes)
        if not works:
            return outcomes

        results = run_pipeline(self.analyzer, works, self._fetch, self.executor)
        for work, result in zip(works, results, strict=True):
            work.clock = result.clock
            work.decoded, work.faces = result.decoded, result.faces
            problem = result.error
            if isinstance(problem, ImageError):
                work.failure = problem
            elif problem is not None and (classify(problem) is Outcome.RETRY or denied(problem)):
                work.outage = problem
            elif problem is not None:
                work.error = problem

        stored: dict[str, list[str]] = defaultdict(list)  # user -> image ids with new faces
        replaced: dict[str, list[str]] = defaultdict(list)  # user -> images with faces gone
        for work in works:
            outcome = self._store(work)
            if outcome is not Outcome.DONE:
                outcomes[work.message_id] = worse(outcomes[work.message_id], outcome)
                continue
            stored_as = work.result
            if stored_as is not None and stored_as.replaced:
                replaced[work.request.user_id].append(work.request.image_id)
            # The same bytes again are asked again too: a crash after the store and before this
            # request must not leave faces ungrouped (grouping skips what it placed already).
            if stored_as is not None and stored_as.stored and work.faces and not work.failure:
                stored[work.request.user_id].append(work.request.image_id)
        for work in self.screen.overtaken(works, stored, replaced):
            outcomes[work.message_id] = worse(outcomes[work.message_id], Outcome.RETRY)

        users = set(stored) | set(replaced)
        if users and not self._request_grouping(stored, replaced):
            # Grouping must hear about these images: redo the (idempotent) batch later.
            for work in works:
                if work.request.user_id in users:
                    outcomes[work.message_id] = worse(outcomes[work.message_id], Outcome.RETRY)
        return outcomes

    def _fetch(self, work: ImageWork, clock: StageClock) -> DecodedImage:
        started = time.perf_counter()
        response = get_photo(self.s3, work.request)
        work.version = version_of(response)
        return read_and_decode(response, self.limits, clock, started)

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
            work.failure = processing_error(work.error)
        started = time.perf_counter()
        image = image_doc(work, self.analyzer.model_id)
        try:
            if work.failure is not None:
                return self._fail(work, image, work.failure, context)
            faces = face_docs(work, self.analyzer.model_id)
            if work.clock is not None:
                # The total is the image's elapsed wall time, not a sum of its stages.
                work.clock.record("store", started)
                image.timings_ms = work.clock.timings_ms()
            work.result = store_version(
                self.repository,
                self.s3,
                self.bucket,
                image,
                faces,
                lambda docs: upload_crops(self.s3, self.bucket, self.executor, docs, work),
                fault=self.screen.fault,
            )
        except Exception as error:
            if classify(error) is Outcome.RETRY:
                log.warning(
                    "outage while storing the image", extra={**context, "error": repr(error)}
                )
                return Outcome.RETRY
            # Not the photo's fault alone either: it ends failed with the reason, if it can.
            log.error("storing the image failed", exc_info=True, extra=context)
            with OutageGuard():
                return self._fail(work, image, processing_error(error), context)
            return Outcome.RETRY
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
        work.result = store_version(
            self.repository,
            self.s3,
            self.bucket,
            image,
            [],
            lambda docs: None,
            status=ImageStatus.FAILED,
            fault=self.screen.fault,
        )
        log.warning(
            "image failed", extra={**context, "reason": failure.reason, "detail": failure.detail}
        )
        self.metrics.emit({Metric.IMAGES_FAILED: 1}, reason=str(failure.reason), **context)
        return Outcome.DONE

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
            with OutageGuard() as guard:
                self.sqs.send_message(QueueUrl=self.settings.group_face_queue_url, MessageBody=body)
            if guard.hit:
                log.warning(
                    "grouping request not sent",
                    extra={"user_id": user_id, "error": repr(guard.error)},
                )
                return False
        return True

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


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
