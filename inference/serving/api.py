"""The HTTP API (FastAPI, as the Serve ingress): submit, poll, fetch, cancel, or generate in
one call.

The ingress holds no job state: it validates, stores the request in the results location,
and asks the job store to admit it; a replica of it can die at any time and no job notices.
Every request first passes the gate (``gate.py``): no key 401, a wrong key 403, a body too
big or too slow 413 / 408. Each job belongs to the key that made it, and to any other key it
is 404. Every refusal leaves the server as it was: a body that is not a PNG, JPEG or WebP
image is 400, too many bytes or pixels 413, a parameter out of bounds 422 naming the field
(FastAPI's own error shape), a key over its quota 429 and a full queue 503, both with
Retry-After. A synchronous request that runs past
``serving.sync_timeout_s`` gets 504, and one whose client hangs up is cancelled: both free
their slot. Routes are documented at ``/docs`` and in ``/openapi.json``.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at runtime,
# and Serve's ingress wrapper moves them where string annotations no longer resolve.
import asyncio
import contextlib
import contextvars
import logging
import math
import uuid
from typing import Any, AsyncIterator, Optional

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipeline.generation.request import GenerationRequest, ImageError, RequestError, TooLargeError, decode_image, make_request
from inference.serving.access import public_record
from inference.serving.gate import FORM_OVERHEAD, Gate, IngressRules, configure
from inference.serving.results import JOB_ID, ResultsLocation, new_job_id, request_parameters
from inference.serving.store import short_error, worker_lost
from pipeline.config.schema import Config

api = FastAPI(
    title="I2VGen-XL",
    version="1.0",
    description="Image (and a short text) to video: the base stage at 448x256, refined at 1280x720.",
)

log = logging.getLogger("ray.serve")

# Job store restarts a synchronous request waits through before it gives up.
_STORE_RESTARTS_WAITED = 3

api.add_middleware(Gate)


@api.exception_handler(RequestError)
async def out_of_bounds(request: Request, err: RequestError) -> JSONResponse:
    """422 in FastAPI's own validation shape, so clients parse one format."""
    detail = [{"loc": ["body", err.field], "msg": err.message, "type": "value_error"}]
    return JSONResponse(status_code=422, content={"detail": detail})


@api.exception_handler(Exception)
async def internal_error(request: Request, err: Exception) -> JSONResponse:
    """Anything unexpected: the traceback goes to the server's log under an error id, and
    the client gets the id, never the traceback (nor the addresses and process ids in it)."""
    error_id = uuid.uuid4().hex[:12]
    log.error("error %s on %s %s", error_id, request.method, request.url.path, exc_info=err)
    return JSONResponse(status_code=500, content={"detail": f"internal error (error id {error_id})", "error_id": error_id})


@api.exception_handler(ImageError)
async def not_an_image(request: Request, err: ImageError) -> JSONResponse:
    return JSONResponse(status_code=400, content={"detail": str(err)})


@api.exception_handler(TooLargeError)
async def too_large(request: Request, err: TooLargeError) -> JSONResponse:
    return JSONResponse(status_code=413, content={"detail": str(err)})


class VideoForm:
    """The multipart form of both video routes: the image, and parameters that default to
    the config's ``sampling`` section when left out."""

    def __init__(
        self,
        image: UploadFile = File(..., description="the first frame: PNG, JPEG or WebP"),
        prompt: Optional[str] = Form(None, description="a short text for the refiner"),
        frames: Optional[int] = Form(None), fps: Optional[int] = Form(None),
        steps: Optional[int] = Form(None, description="base sampling steps"),
        guidance: Optional[float] = Form(None, description="classifier-free guidance scale"),
        sampler: Optional[str] = Form(None, description="ddim or dpm++"), seed: Optional[int] = Form(None),
    ) -> None:
        self.image, self.prompt, self.frames, self.fps = image, prompt, frames, fps
        self.steps, self.guidance, self.sampler, self.seed = steps, guidance, sampler, seed


def _owner(request: Request) -> Optional[str]:
    """The calling key's digest, as the gate found it (None when no keys are configured)."""
    return getattr(request.state, "owner", None)


@serve.deployment(name="VideoAPI")
@serve.ingress(api)
class VideoAPI:
    def __init__(
        self, store: DeploymentHandle, config: Config, results_uri: str, refined: bool, key_digests: frozenset[str]
    ) -> None:
        self.store, self.config, self.refined = store, config, refined
        self.results = ResultsLocation(results_uri)
        self.background: set[asyncio.Task] = set()
        limits = config.serving
        configure(IngressRules(key_digests, limits.max_upload_bytes + FORM_OVERHEAD, limits.body_timeout_s,
                               limits.request_timeout_s))

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "preset": self.config.preset,
            "stages": ["base", "refiner"] if self.refined else ["base"],
            "pending_jobs": await self.store.pending.remote(),
        }

    @api.get("/v1/stats")
    async def stats(self) -> dict[str, Any]:
        """Job counts, outcomes, and the batches each stage ran, summed over its replicas."""
        return await self.store.stats.remote()

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics(self) -> str:
        """The same figures in Prometheus' text format: queue, batch sizes, latencies, outcomes."""
        return await self.store.prometheus.remote()

    @api.post("/v1/videos", status_code=202)
    async def submit(self, http: Request, form: VideoForm = Depends()):
        """Queue a video; poll ``GET /v1/videos/{id}``, then fetch ``/content``."""
        owner = await self._counted(_owner(http))
        request, job_id = await self._request(form), new_job_id()
        async with self._cancelled_on_hang_up(job_id):
            await self._submit(job_id, request, owner)
        return {"id": job_id, "status": "queued", "status_url": f"/v1/videos/{job_id}",
                "content_url": f"/v1/videos/{job_id}/content"}

    @api.get("/v1/videos/{job_id}")
    async def job_status(self, job_id: str, http: Request) -> dict[str, Any]:
        return public_record(await self._job(job_id, _owner(http)))

    @api.delete("/v1/videos/{job_id}")
    async def cancel(self, job_id: str, http: Request) -> dict[str, Any]:
        """Cancel an unfinished job (it then reads ``cancelled``), or delete a finished one
        and its video."""
        self._check_id(job_id)
        record = await self.store.delete.remote(job_id, _owner(http))
        if record is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return public_record(record)

    @api.get("/v1/videos/{job_id}/content")
    async def job_content(self, job_id: str, http: Request) -> Response:
        return await self._video(await self._job(job_id, _owner(http)))

    @api.post("/v1/generate", response_class=Response, responses={200: {"content": {"video/mp4": {}}}})
    async def generate(self, http: Request, form: VideoForm = Depends()):
        """Generate and answer with the mp4 itself: for short jobs (the connection stays open,
        up to ``serving.sync_timeout_s``; a client that hangs up cancels its job)."""
        owner = await self._counted(_owner(http))
        request, job_id = await self._request(form), new_job_id()
        timeout = self.config.serving.sync_timeout_s
        async with self._cancelled_on_hang_up(job_id):
            await self._submit(job_id, request, owner)
            try:
                record = await asyncio.wait_for(self._wait(job_id), timeout)
            except asyncio.TimeoutError:
                await self.store.cancel.remote(job_id, "failed", f"timed out after {timeout:g} s (serving.sync_timeout_s)")
                raise HTTPException(504, f"job {job_id} took longer than {timeout:g} s; it was cancelled. "
                                         "POST /v1/videos queues a job without a time limit.") from None
        if record["status"] != "succeeded":
            raise HTTPException(500, f"job {job_id} {record['status']}: {record['error']}")
        return await self._video(record, headers={"X-Job-Id": job_id})

    @contextlib.asynccontextmanager
    async def _cancelled_on_hang_up(self, job_id: str) -> AsyncIterator[None]:
        """A client that hangs up (Serve cancels the handler) cancels its job, wherever the
        handler was: storing the request, being admitted, or waiting for the video."""
        try:
            yield
        except asyncio.CancelledError:
            # Serve cancels every call the cancelled request makes, so the cancel is sent
            # from a task with a fresh context, outside the request.
            task = asyncio.create_task(self._cancel(job_id, "the client disconnected"), context=contextvars.Context())
            self.background.add(task)
            task.add_done_callback(self.background.discard)
            raise

    async def _cancel(self, job_id: str, reason: str) -> None:
        try:
            await self.store.cancel.remote(job_id, "cancelled", reason)
        except Exception:  # the job then ends when its stages finish it; say why it did not end now
            log.exception("job %s: could not cancel it after its client hung up", job_id)

    async def _wait(self, job_id: str) -> dict[str, Any]:
        """The finished job's record. If the job store's replica dies meanwhile, its successor
        reads the job back from storage and drives it again: wait on that one."""
        for attempt in range(1, _STORE_RESTARTS_WAITED + 1):
            try:
                record = await self.store.wait.remote(job_id)
                break
            except Exception as err:  # only a lost store is waited out; anything else is a real error
                if not worker_lost(err) or attempt == _STORE_RESTARTS_WAITED:
                    raise
                log.warning("job %s: the job store was lost while waiting (%s); waiting on its successor",
                            job_id, short_error(err))
                await asyncio.sleep(1.0)
        if record is None:
            raise HTTPException(500, f"job {job_id} is unknown to the job store")
        return record

    async def _counted(self, owner: Optional[str]) -> Optional[str]:
        """Count a submission against its key's rate (429 with Retry-After past it), before
        its body is decoded."""
        if owner is not None:
            wait_s = await self.store.take_submission.remote(owner)
            if wait_s is not None:
                per_minute = self.config.serving.submissions_per_minute_per_key
                raise HTTPException(429, f"this key has made {per_minute} submissions in the last minute "
                                         "(serving.submissions_per_minute_per_key)",
                                    headers={"Retry-After": str(max(1, math.ceil(wait_s)))})
        return owner

    async def _request(self, form: VideoForm) -> GenerationRequest:
        """A validated request; the exception handlers above turn refusals into 4xx."""
        limits = self.config.serving
        data = await form.image.read(limits.max_upload_bytes + 1)
        pixels = await asyncio.to_thread(decode_image, data, limits)
        return make_request(self.config, pixels, form.prompt, form.frames, form.fps, form.steps, form.guidance,
                            form.sampler, form.seed)

    async def _submit(self, job_id: str, request: GenerationRequest, owner: Optional[str]) -> None:
        """Store the request, then have the job store admit it (or refuse: 503 when the
        queue is full, 429 when the key's own pending jobs are at its quota)."""
        try:
            await asyncio.to_thread(self.results.save_request, job_id, request)
        except OSError as err:  # storage down: the client may retry; nothing was admitted
            log.exception("job %s: could not store its request", job_id)
            raise HTTPException(503, f"the results location is unavailable ({type(err).__name__}); try again later",
                                headers={"Retry-After": str(self.config.serving.retry_after_s)}) from err
        refusal = await self.store.submit.remote(job_id, self.refined, request_parameters(request), owner)
        if refusal is not None:
            await asyncio.to_thread(self.results.forget, job_id)
            raise HTTPException(refusal.status, refusal.detail, headers=refusal.headers)

    def _check_id(self, job_id: str) -> None:
        if not JOB_ID.match(job_id):
            raise HTTPException(404, f"no job {job_id!r}: job ids are 32 hexadecimal digits")

    async def _job(self, job_id: str, owner: Optional[str]) -> dict[str, Any]:
        """The caller's own job: another key's job is as unknown as a made-up id."""
        self._check_id(job_id)
        record = await self.store.status.remote(job_id, owner)
        if record is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown, or forgotten after keep_finished_jobs/_s)")
        return record

    async def _video(self, record: dict[str, Any], headers: Optional[dict[str, str]] = None) -> Response:
        """The job's mp4 from the results location; a job that is not done says why."""
        job_id = record["id"]
        if record["status"] != "succeeded":
            reason = f": {record['error']}" if record["error"] else ""
            raise HTTPException(409, f"job {job_id} is {record['status']}{reason}")
        video = await asyncio.to_thread(self.results.video, job_id)
        if video is None:  # forgotten between the status and the read
            raise HTTPException(410, f"job {job_id} finished, but its video has since been deleted or expired")
        return Response(video, media_type="video/mp4", headers=headers)
