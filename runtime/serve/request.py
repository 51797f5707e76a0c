"""Reading a ``/v1/detect`` request: query options, the body within its size limit, the images in it."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from retina_deploy.runtime.post.detections import Detections


class Reject(Exception):
    """An HTTP error answer: status, message, rejection reason for the metrics, extra headers."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers or {}


def query_options(request: Request) -> tuple[float, int | None]:
    """(score_threshold, max_detections) from the query string; 400 naming a bad value."""
    q = request.query_params
    unknown = sorted(set(q) - {"score_threshold", "max_detections"})
    if unknown:
        raise Reject(400, f"unknown query parameter {unknown[0]!r} (score_threshold, max_detections)", "bad_request")
    try:
        score = float(q.get("score_threshold", "0"))
        max_dets = int(q["max_detections"]) if "max_detections" in q else None
    except ValueError as e:
        raise Reject(400, f"bad query parameter: {e}", "bad_request") from None
    if not 0.0 <= score <= 1.0:  # also refuses NaN
        raise Reject(400, f"score_threshold must be in [0, 1], got {q['score_threshold']}", "bad_request")
    if max_dets is not None and max_dets < 0:
        raise Reject(400, f"max_detections must be >= 0, got {max_dets}", "bad_request")
    return score, max_dets


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Reject(413, f"body of {int(length)} bytes exceeds the limit of {limit} bytes", "too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise Reject(413, f"body exceeds the limit of {limit} bytes", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def request_images(request: Request, *, max_bytes: int, max_images: int) -> list[tuple[str, bytes]]:
    """[(name, encoded bytes)]: the body, or each file part of a multipart body."""
    body = await _body(request, max_bytes)
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()  # case-insensitive
    if media_type != "multipart/form-data":
        if not body:
            raise Reject(400, "empty body: send one image as the body or several as multipart/form-data", "bad_request")
        return [("body", body)]

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_images, max_fields=max_images)
    except HTTPException as e:
        raise Reject(400, f"bad multipart body: {e.detail}", "bad_request") from None
    images = []
    for field, value in form.multi_items():
        if not isinstance(value, UploadFile):
            raise Reject(400, f"multipart field {field!r} is not a file part", "bad_request")
        images.append((value.filename or field, await value.read()))
    await form.close()
    if not images:
        raise Reject(400, "multipart body has no file parts", "bad_request")
    return images


def filtered(d: Detections, score_threshold: float, max_detections: int | None) -> Detections:
    keep = np.flatnonzero(d.scores >= score_threshold)[:max_detections]
    names = tuple(d.class_names[i] for i in keep)
    return Detections(boxes=d.boxes[keep], scores=d.scores[keep], class_ids=d.class_ids[keep], class_names=names)
