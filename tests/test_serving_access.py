"""Who may use the endpoint and what a hostile request costs, over real HTTP: API keys,
job ownership, per-key quotas, the loopback rule, streamed bodies and image bombs.

One Serve instance listens on every interface, so that a request to this machine's own
non-loopback address arrives from a client that is not loopback. Two base-only apps run
on it: ``/keyed`` with API keys, ``/open`` without."""

from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
import time
from typing import Iterator, Optional

import pytest
import requests

from conftest import free_port, png_claiming, thin_png
from inference.serving.access import KEYS_ENV, key_digest
from pipeline.config import load_config

KEYS = {"alice": "alice-key-5b1e", "bob": "bob-key-77c2", "carol": "carol-key-90aa"}
SERVING = [
    "serving.base.num_cpus=0.25", "serving.ingress_num_cpus=0.25", "serving.base.max_batch_size=4",
    "serving.base.batch_wait_timeout_s=0.2", "serving.max_upload_bytes=200000", "serving.max_pending_jobs=16",
    "serving.max_pending_jobs_per_key=2", "serving.submissions_per_minute_per_key=20", "serving.body_timeout_s=4",
]
FASTEST = {"frames": "2", "steps": "1"}


def _own_address() -> Optional[str]:
    """This machine's first non-loopback IPv4 address, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def servers(ray_local, tiny_exports, tmp_path_factory):
    from ray import serve

    from inference.serving.app import compose

    keys_file = tmp_path_factory.mktemp("keys") / "api-keys"
    keys_file.write_text("# one per line\n" + "\n".join(KEYS.values()) + "\n")
    environment_keys = os.environ.pop(KEYS_ENV, None)
    port = free_port()
    serve.start(http_options={"host": "0.0.0.0", "port": port})
    results = {}
    for name, extra in (("keyed", [f"serving.api_keys_file={keys_file}"]), ("open", [])):
        results[name] = tmp_path_factory.mktemp(name)
        config = load_config("tiny", overrides=[*SERVING, *extra, f"serving.results_dir={results[name]}"])
        serve.run(compose(config, str(tiny_exports["base"]), None), name=f"i2vgen-{name}", route_prefix=f"/{name}")
    yield {"port": port, "image": tiny_exports["image"].read_bytes(), "results": results}
    serve.shutdown()
    if environment_keys is not None:
        os.environ[KEYS_ENV] = environment_keys


def _url(servers: dict, app: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{servers['port']}/{app}"


def _post(url: str, image: bytes, key: Optional[str] = None, route: str = "/v1/generate", **fields: str):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url + route, files={"image": ("in.png", image)}, data=fields, headers=headers, timeout=300)


def _get(url: str, key: Optional[str] = None) -> requests.Response:
    return requests.get(url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)


def test_every_route_but_healthz_needs_a_right_key(servers) -> None:
    url = _url(servers, "keyed")
    assert _get(url + "/healthz").status_code == 200
    for route in ("/v1/stats", "/metrics", "/docs", "/openapi.json", "/v1/videos/" + "0" * 32):
        missing, wrong = _get(url + route), _get(url + route, "not-a-key")
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer", (route, missing.text)
        assert wrong.status_code == 403, (route, wrong.text)
    assert _get(url + "/openapi.json", KEYS["alice"]).status_code == 200
    assert _post(url, servers["image"], **FASTEST).status_code == 401
    assert _post(url, servers["image"], "not-a-key", **FASTEST).status_code == 403
    answer = _post(url, servers["image"], KEYS["alice"], **FASTEST)
    assert answer.status_code == 200 and answer.headers["content-type"] == "video/mp4", answer.text


def _until_finished(url: str, job_id: str, key: str) -> dict:
    deadline = time.time() + 300
    while (record := _get(f"{url}/v1/videos/{job_id}", key).json())["status"] in ("queued", "running"):
        assert time.time() < deadline, record
        time.sleep(0.2)
    return record


def test_a_job_is_seen_only_by_the_key_that_made_it(servers) -> None:
    url = _url(servers, "keyed")
    accepted = _post(url, servers["image"], KEYS["alice"], route="/v1/videos", **FASTEST)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    record = _until_finished(url, job_id, KEYS["alice"])
    assert record["status"] == "succeeded" and "owner" not in record
    for path in (f"/v1/videos/{job_id}", f"/v1/videos/{job_id}/content"):
        assert _get(url + path, KEYS["bob"]).status_code == 404
    deleted = requests.delete(f"{url}/v1/videos/{job_id}", headers={"Authorization": f"Bearer {KEYS['bob']}"}, timeout=60)
    assert deleted.status_code == 404
    assert _get(f"{url}/v1/videos/{job_id}/content", KEYS["alice"]).status_code == 200  # bob deleted nothing
    stored = json.loads((servers["results"]["keyed"] / "jobs" / f"{job_id}.json").read_text())
    assert stored["owner"] == key_digest(KEYS["alice"])  # the key's digest, never the key


def test_per_key_quotas_answer_429_with_retry_after(servers) -> None:
    url = _url(servers, "keyed")
    # Pending jobs: carol may have 2 unfinished; long jobs keep them unfinished.
    slow = {"frames": "8", "steps": "40"}
    answers = [_post(url, servers["image"], KEYS["carol"], route="/v1/videos", seed=str(s), **slow) for s in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429], [a.text for a in answers]
    assert int(answers[2].headers["Retry-After"]) > 0 and "max_pending_jobs_per_key" in answers[2].text
    assert _post(url, servers["image"], KEYS["bob"], route="/v1/videos", **FASTEST).status_code == 202  # bob is not carol
    for accepted in answers[:2]:
        requests.delete(f"{url}/v1/videos/{accepted.json()['id']}", headers={"Authorization": f"Bearer {KEYS['carol']}"},
                        timeout=60)
    # Submissions per minute: 20 per key, counted before the body is read (a bad body counts,
    # and so did carol's three above).
    codes = [_post(url, b"not an image", KEYS["carol"]).status_code for _ in range(20 - 3)]
    assert set(codes) == {400}, codes
    limited = _post(url, servers["image"], KEYS["carol"], **FASTEST)
    assert limited.status_code == 429 and 0 < int(limited.headers["Retry-After"]) <= 60, limited.text
    assert _post(url, servers["image"], KEYS["alice"], **FASTEST).status_code == 200


def test_without_keys_only_this_machine_is_served(servers) -> None:
    own = _own_address()
    if own is None:
        pytest.skip("this machine has no non-loopback address to call from (tests/test_access.py checks the rule itself)")
    assert _get(_url(servers, "open") + "/v1/stats").status_code == 200
    remote = _get(_url(servers, "open", own) + "/v1/stats")
    assert remote.status_code == 403 and "API keys" in remote.text
    assert _get(_url(servers, "open", own) + "/healthz").status_code == 200
    assert _get(_url(servers, "keyed", own) + "/v1/stats", KEYS["alice"]).status_code == 200  # keys open the network


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    boundary = b"--x0x0x0"
    yield boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
    for _ in range(total // size):
        yield b"\0" * size
    yield b"\r\n" + boundary + b"--\r\n"


def _big_temp_files(since: float, size: int) -> list[str]:
    folder = tempfile.gettempdir()
    found = []
    for entry in os.scandir(folder):
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_size >= size and entry.stat().st_mtime >= since:
                found.append(entry.path)
        except FileNotFoundError:
            continue
    return found


def _form_post(servers: dict, length: tuple[str, str]) -> http.client.HTTPConnection:
    """A multipart POST to the keyed app whose headers are sent and whose body is not yet:
    ``length`` is its Content-Length or Transfer-Encoding header."""
    connection = http.client.HTTPConnection("127.0.0.1", servers["port"], timeout=120)
    connection.putrequest("POST", "/keyed/v1/generate")
    connection.putheader("Authorization", f"Bearer {KEYS['alice']}")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x0x0x0")
    connection.putheader(*length)
    connection.endheaders()
    return connection


def test_a_chunked_upload_past_the_limit_is_cut_off_with_413(servers) -> None:
    started = time.time()
    connection = _form_post(servers, ("Transfer-Encoding", "chunked"))
    try:
        for chunk in _chunks(30 * 1024 * 1024):
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading: what it answered is below
    answer = connection.getresponse()
    body = answer.read().decode()
    assert answer.status == 413 and "limit" in body, body
    connection.close()
    assert not _big_temp_files(started, 30 * 1024 * 1024)
    assert _post(_url(servers, "keyed"), servers["image"], KEYS["alice"], **FASTEST).status_code == 200


def test_a_body_that_trickles_in_past_its_time_limit_gets_408(servers) -> None:
    connection = _form_post(servers, ("Content-Length", "100000"))
    connection.send(next(_chunks(0)))  # the form's first part header, then nothing
    answer = connection.getresponse()
    body = answer.read().decode()
    assert answer.status == 408 and "serving.body_timeout_s" in body, body
    connection.close()


HOSTILE = {"thin": thin_png, "claims 20000x20000": lambda: png_claiming(20000, 20000),
           "eps": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_images_get_4xx_and_the_next_request_succeeds(servers, name) -> None:
    url = _url(servers, "keyed")
    answer = _post(url, HOSTILE[name](), KEYS["alice"], **FASTEST)
    assert answer.status_code in (400, 413), answer.text
    assert "Traceback" not in answer.text and "pid" not in answer.text
    assert _post(url, servers["image"], KEYS["alice"], **FASTEST).status_code == 200


def test_a_failed_jobs_error_is_short_and_carries_an_error_id() -> None:
    from inference.serving.store import logged_error

    try:
        raise RuntimeError("worker at 10.1.2.3:6379 (pid=4242) ran out of memory\nTraceback (most recent call last):")
    except RuntimeError as err:
        message = logged_error("0" * 32, err)
    assert message.startswith("RuntimeError: worker at <hidden>") and "4242" not in message
    assert "Traceback" not in message and "error id " in message

