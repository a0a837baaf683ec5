"""The HTTP API (FastAPI, as the Serve ingress): submit, poll, fetch, or generate in one call.

Every refusal leaves the server as it was: a body that is not an image is 400, too many
bytes or pixels 413, a parameter out of bounds 422 naming the field (FastAPI's own error
shape), and a full queue 503 with Retry-After. Routes are documented at ``/docs`` and in
``/openapi.json``.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at runtime,
# and Serve's ingress wrapper moves them where string annotations no longer resolve.
import asyncio
import uuid
from typing import Any, Optional

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from inference.request import GenerationRequest, ImageError, RequestError, TooLargeError, decode_image, make_request
from inference.serving.jobs import JobStore
from inference.video_files import mp4_bytes
from pipeline.config.schema import Config

api = FastAPI(
    title="I2VGen-XL",
    version="1.0",
    description="Image (and a short text) to video: the base stage at 448x256, refined at 1280x720.",
)

# Multipart overhead allowed beyond serving.max_upload_bytes before the body is read at all.
_FORM_OVERHEAD = 64 * 1024


# The replica's upload limit, set from its config; the middleware reads it (one replica per process).
_upload_limit: dict[str, int] = {}


@api.middleware("http")
async def refuse_large_bodies(request: Request, call_next):
    """413 from the Content-Length header, before a huge upload is spooled anywhere."""
    declared, maximum = request.headers.get("content-length", ""), _upload_limit.get("bytes")
    if maximum is not None and declared.isdigit() and int(declared) > maximum + _FORM_OVERHEAD:
        message = f"image: a body of {declared} bytes is over the limit of {maximum}"
        return JSONResponse(status_code=413, content={"detail": message})
    return await call_next(request)


@api.exception_handler(RequestError)
async def out_of_bounds(request: Request, err: RequestError) -> JSONResponse:
    """422 in FastAPI's own validation shape, so clients parse one format."""
    detail = [{"loc": ["body", err.field], "msg": err.message, "type": "value_error"}]
    return JSONResponse(status_code=422, content={"detail": detail})


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
        image: UploadFile = File(..., description="the first frame (any format Pillow reads)"),
        prompt: Optional[str] = Form(None, description="a short text for the refiner"),
        frames: Optional[int] = Form(None), fps: Optional[int] = Form(None),
        steps: Optional[int] = Form(None, description="base sampling steps"),
        guidance: Optional[float] = Form(None, description="classifier-free guidance scale"),
        sampler: Optional[str] = Form(None, description="ddim or dpm++"), seed: Optional[int] = Form(None),
    ) -> None:
        self.image, self.prompt, self.frames, self.fps = image, prompt, frames, fps
        self.steps, self.guidance, self.sampler, self.seed = steps, guidance, sampler, seed


@serve.deployment(name="VideoAPI", ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class VideoAPI:
    def __init__(
        self, base: DeploymentHandle, refiner: Optional[DeploymentHandle], config: Config, store_name: str
    ) -> None:
        self.base, self.refiner, self.config = base, refiner, config
        limits = config.serving
        _upload_limit["bytes"] = limits.max_upload_bytes
        self.store = JobStore.options(name=store_name, get_if_exists=True).remote(
            limits.max_pending_jobs, limits.keep_finished_jobs
        )
        self.tasks: set[asyncio.Task] = set()

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "preset": self.config.preset,
            "stages": ["base", "refiner"] if self.refiner is not None else ["base"],
            "pending_jobs": await self.store.pending.remote(),
        }

    @api.get("/v1/stats")
    async def stats(self) -> dict[str, Any]:
        """Job counts and the batch sizes the stage replica that answers has run."""
        out = {"jobs": await self.store.counts.remote(), "base": await self.base.stats.remote()}
        if self.refiner is not None:
            out["refiner"] = await self.refiner.stats.remote()
        return out

    @api.post("/v1/videos", status_code=202)
    async def submit(self, form: VideoForm = Depends()):
        """Queue a video; poll ``GET /v1/videos/{id}``, then fetch ``/content``."""
        request = await self._request(form)
        job_id = await self._admit(request)
        task = asyncio.create_task(self._run_job(job_id, request, keep=True))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return {"id": job_id, "status": "queued", "status_url": f"/v1/videos/{job_id}",
                "content_url": f"/v1/videos/{job_id}/content"}

    @api.get("/v1/videos/{job_id}")
    async def job_status(self, job_id: str) -> dict[str, Any]:
        job = await self.store.status.remote(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown, or forgotten after keep_finished_jobs)")
        return job

    @api.get("/v1/videos/{job_id}/content")
    async def job_content(self, job_id: str) -> Response:
        job = await self.store.status.remote(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        if job["status"] != "succeeded":
            raise HTTPException(409, f"job {job_id} is {job['status']}" + (f": {job['error']}" if job["error"] else ""))
        video = await self.store.video.remote(job_id)
        if video is None:
            raise HTTPException(404, f"job {job_id} was synchronous; its video was returned then")
        return Response(video, media_type="video/mp4")

    @api.post("/v1/generate", response_class=Response, responses={200: {"content": {"video/mp4": {}}}})
    async def generate(self, form: VideoForm = Depends()):
        """Generate and answer with the mp4 itself: for short jobs (the connection stays open)."""
        request = await self._request(form)
        job_id = await self._admit(request)
        video = await self._run_job(job_id, request, keep=False)
        if video is None:
            job = await self.store.status.remote(job_id)
            raise HTTPException(500, f"generation failed: {job['error'] if job else 'unknown error'}")
        return Response(video, media_type="video/mp4", headers={"X-Job-Id": job_id})

    async def _request(self, form: VideoForm) -> GenerationRequest:
        """A validated request; the exception handlers above turn refusals into 4xx."""
        limits = self.config.serving
        data = await form.image.read(limits.max_upload_bytes + 1)
        pixels = await asyncio.to_thread(decode_image, data, limits.max_upload_bytes, limits.max_image_pixels)
        return make_request(self.config, pixels, form.prompt, form.frames, form.fps, form.steps, form.guidance,
                            form.sampler, form.seed)

    async def _admit(self, request: GenerationRequest) -> str:
        job_id = uuid.uuid4().hex
        parameters = {k: getattr(request, k) for k in ("prompt", "frames", "fps", "steps", "guidance", "sampler", "seed")}
        if not await self.store.admit.remote(job_id, self.refiner is not None, parameters):
            limits = self.config.serving
            raise HTTPException(
                503, f"{limits.max_pending_jobs} jobs are pending; try again later",
                headers={"Retry-After": str(limits.retry_after_s)},
            )
        return job_id

    async def _run_job(self, job_id: str, request: GenerationRequest, keep: bool) -> Optional[bytes]:
        """Base, then refiner, then the mp4; the job store hears how it ended."""
        try:
            video = await self.base.generate.remote(job_id, request)
            if self.refiner is not None:
                video = await self.refiner.generate.remote(job_id, request, video)
            mp4 = await asyncio.to_thread(mp4_bytes, video, request.fps, self.config.serving.crf)
        except Exception as err:  # reported to the client through the job, not raised into Serve
            await self.store.finish.remote(job_id, error=f"{type(err).__name__}: {err}")
            return None
        await self.store.finish.remote(job_id, mp4 if keep else None)
        return mp4
