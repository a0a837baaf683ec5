"""The Ray Serve endpoint on 127.0.0.1, through real HTTP: batching, jobs, and bad input."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import decord
import numpy as np
import pytest
import requests
from PIL import Image

from conftest import free_port, png_claiming, thin_png
from pipeline.config import load_config

SERVING = [
    "serving.base.num_cpus=0.5", "serving.refiner.num_cpus=0.5",
    "serving.base.max_batch_size=4", "serving.refiner.max_batch_size=4",
    "serving.base.batch_wait_timeout_s=0.5", "serving.refiner.batch_wait_timeout_s=0.5",
    "serving.max_upload_bytes=200000", "serving.max_image_pixels=90000", "serving.max_pending_jobs=8",
]
FAST = {"frames": "4", "steps": "2"}
FASTEST = {"frames": "2", "steps": "1"}


@pytest.fixture(scope="module")
def server(ray_local, tiny_exports, tmp_path_factory):
    from ray import serve

    from inference.serving.app import compose

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = load_config("tiny", overrides=[*SERVING, f"serving.results_dir={tmp_path_factory.mktemp('results')}"])
    app = compose(config, str(tiny_exports["base"]), str(tiny_exports["refiner"]))
    serve.run(app, name="i2vgen-test", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _post(url: str, image: bytes, route: str = "/v1/generate", **fields: str) -> requests.Response:
    return requests.post(url + route, files={"image": ("in.png", image, "image/png")}, data=fields, timeout=300)


def _frames(mp4: bytes, tmp_path: Path, name: str) -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(mp4)
    return decord.VideoReader(str(path)).get_batch(list(range(4))).asnumpy()


def test_concurrent_requests_are_served_in_batches(server, tiny_exports, tmp_path) -> None:
    image = tiny_exports["image"].read_bytes()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda s: _post(server, image, seed=str(s), **FAST), range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text[:200] for a in answers]
    assert all(a.headers["content-type"] == "video/mp4" for a in answers)
    frames = _frames(answers[0].content, tmp_path, "a.mp4")
    assert frames.shape == (4, 128, 224, 3)  # the tiny refiner's frame
    assert not np.array_equal(frames, _frames(answers[1].content, tmp_path, "b.mp4"))  # seeds differ
    stats = requests.get(server + "/v1/stats", timeout=30).json()
    for stage in ("base", "refiner"):
        sizes = {int(k): n for k, n in stats[stage]["batch_sizes"].items()}
        assert sum(k * n for k, n in sizes.items()) >= 8
        assert max(sizes) > 1, f"{stage} never batched: {sizes}"
    assert stats["outcomes"]["succeeded"] >= 8
    metrics = requests.get(server + "/metrics", timeout=30)
    assert metrics.headers["content-type"].startswith("text/plain")
    for line in ('i2vgen_batch_size_bucket{stage="refiner",le="+Inf"}', 'i2vgen_job_outcomes_total{status="succeeded"}',
                 'i2vgen_jobs{status="queued"} 0', 'i2vgen_batch_seconds_count{stage="base"}'):
        assert line in metrics.text, line


def test_a_queued_job_reports_progress_and_matches_the_synchronous_route(server, tiny_exports) -> None:
    image = tiny_exports["image"].read_bytes()
    accepted = _post(server, image, route="/v1/videos", seed="5", prompt="a red square", **FAST)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    deadline = time.time() + 300
    while (status := requests.get(server + job["status_url"], timeout=30).json())["status"] in ("queued", "running"):
        assert time.time() < deadline
        assert 0.0 <= status["progress"] <= 1.0
        time.sleep(0.2)
    assert status["status"] == "succeeded" and status["progress"] == 1.0, status
    content = requests.get(server + job["content_url"], timeout=30)
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    same = _post(server, image, seed="5", prompt="a red square", **FAST)
    assert same.content == content.content  # one seed, one video, whichever route
    assert requests.get(server + "/v1/videos/nope", timeout=30).status_code == 404
    assert "/v1/videos" in requests.get(server + "/openapi.json", timeout=30).json()["paths"]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "fields", "status", "words"),
    [
        (b"this is not an image", {}, 400, "not a decodable image"),
        (np.random.default_rng(0).bytes(250_000), {}, 413, "bytes"),
        (np.random.default_rng(0).bytes(2_000_000), {}, 413, "bytes"),
        ("big", {}, 413, "pixels"),
        ("ok", {"frames": "1000"}, 422, "frames"),
        ("ok", {"frames": "abc"}, 422, "frames"),
        ("ok", {"sampler": "euler"}, 422, "sampler"),
        ("ok", {"guidance": "-3"}, 422, "guidance"),
    ],
)
def test_bad_input_gets_its_status_and_the_next_request_succeeds(server, image, fields, status, words) -> None:
    body = {"big": _png(400, 400), "ok": _png(64, 48)}.get(image, image) if isinstance(image, str) else image
    answer = _post(server, body, **fields)
    assert answer.status_code == status, answer.text
    assert words in answer.text
    good = _post(server, _png(64, 48), **FASTEST)
    assert good.status_code == 200, good.text


def test_overload_is_refused_with_retry_after_and_then_served(server, tiny_exports) -> None:
    image = tiny_exports["image"].read_bytes()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda s: _post(server, image, route="/v1/videos", seed=str(s), **FASTEST), range(14)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {202, 503} and 503 in codes and 202 in codes, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert int(refused.headers["Retry-After"]) > 0
    for accepted in (a.json() for a in answers if a.status_code == 202):
        deadline = time.time() + 300
        while requests.get(server + accepted["status_url"], timeout=30).json()["status"] != "succeeded":
            assert time.time() < deadline
            time.sleep(0.2)
    assert _post(server, image, **FASTEST).status_code == 200


@pytest.mark.slow  # deploys a second application (about 35 s)
def test_the_released_architecture_is_served_by_the_same_endpoint(server, tiny_exports, tmp_path) -> None:
    """``model.arch: release`` (diffusers' I2VGenXLUNet) behind the same app: single stage,
    so no refiner; its prompt conditions the base."""
    from ray import serve

    from inference.serving.app import compose
    from pipeline.models.stage_file import save_untrained_stages

    config = load_config("tiny_release", overrides=SERVING)
    base = save_untrained_stages(tmp_path, config)["base"]
    serve.run(compose(config, str(base), None), name="i2vgen-release", route_prefix="/release")
    try:
        image = tiny_exports["image"].read_bytes()
        answers = [_post(server + "/release", image, prompt=p, seed="3", **FAST) for p in ("a red square", "a lake")]
        assert [a.status_code for a in answers] == [200, 200], [a.text[:300] for a in answers]
        frames = _frames(answers[0].content, tmp_path, "release.mp4")
        assert frames.shape == (4, config.stages.base.height, config.stages.base.width, 3)
        assert answers[0].content != answers[1].content  # the prompt reaches the released base
        for hostile in (thin_png(), png_claiming(20000, 20000)):  # refused on the header, before crop_wide
            refused = _post(server + "/release", hostile, prompt="a lake", **FAST)
            assert refused.status_code == 413, refused.text
        assert _post(server + "/release", image, prompt="a lake", **FASTEST).status_code == 200
    finally:
        serve.delete("i2vgen-release")


def _pending(server: str) -> int:
    return requests.get(server + "/healthz", timeout=30).json()["pending_jobs"]


def _until_settled(server: str, job_url: str, limit_s: float = 300) -> dict:
    deadline = time.time() + limit_s
    while (record := requests.get(server + job_url, timeout=30).json())["status"] in ("queued", "running"):
        assert time.time() < deadline, record
        time.sleep(0.2)
    return record


def test_clients_that_hang_up_mid_generation_free_their_slots(server, tiny_exports) -> None:
    """50 clients post to the synchronous route and disconnect after 0.7 s; none may leave a
    pending job behind (Serve cancels the handler with a BaseException)."""
    image = tiny_exports["image"].read_bytes()

    def impatient(seed: int) -> str:
        deadline = time.time() + 60
        while time.time() < deadline:  # a full queue (503) is retried: every client gets in and hangs up
            try:
                answer = requests.post(server + "/v1/generate", files={"image": ("in.png", image)},
                                       data={"seed": str(seed), "frames": "4", "steps": "40"}, timeout=(10, 0.7))
            except requests.exceptions.ReadTimeout:
                return "hung up"
            if answer.status_code != 503:
                return str(answer.status_code)
            time.sleep(0.2)
        return "never admitted"

    before = requests.get(server + "/v1/stats", timeout=30).json()["outcomes"]
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(impatient, range(50)))
    assert outcomes == ["hung up"] * 50, outcomes
    deadline = time.time() + 120
    while _pending(server):
        assert time.time() < deadline, "abandoned jobs still hold their slots"
        time.sleep(0.5)
    after = requests.get(server + "/v1/stats", timeout=30).json()["outcomes"]
    # A client may hang up before its job exists (still decoding its upload): most were admitted.
    assert after.get("cancelled", 0) - before.get("cancelled", 0) >= 25, (before, after)
    assert after.get("succeeded", 0) == before.get("succeeded", 0)  # no abandoned job ran to the end
    assert _post(server, image, **FASTEST).status_code == 200


def test_delete_cancels_a_queued_job_and_then_forgets_a_finished_one(server, tiny_exports) -> None:
    image = tiny_exports["image"].read_bytes()
    slow = _post(server, image, route="/v1/videos", frames="8", steps="60").json()
    cancelled = requests.delete(server + slow["status_url"], timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    record = requests.get(server + slow["status_url"], timeout=30).json()
    assert record["status"] == "cancelled"
    assert requests.get(server + slow["content_url"], timeout=30).status_code == 409
    done = _post(server, image, route="/v1/videos", **FASTEST).json()
    assert _until_settled(server, done["status_url"])["status"] == "succeeded"
    assert requests.delete(server + done["status_url"], timeout=30).json()["deleted"] is True
    assert requests.get(server + done["content_url"], timeout=30).status_code == 404
    assert requests.delete(server + "/v1/videos/" + "0" * 32, timeout=30).status_code == 404
    assert requests.get(server + "/v1/videos/..%2F..%2Fetc", timeout=30).status_code == 404
    deadline = time.time() + 60
    while _pending(server):
        assert time.time() < deadline
        time.sleep(0.5)
