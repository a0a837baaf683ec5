"""The Serve application: ``build_app`` for ``serve run`` / ``serve deploy``, and
``run_locally`` for ``i2vgen serve``.

``build_app`` is an application builder: ``serve_config.yaml`` names it in ``import_path``
and passes ``args`` (weights paths, preset, config files, overrides). Replica counts,
GPUs, autoscaling and batching of each stage come from the config's ``serving`` section,
so one ``--set serving.refiner.num_gpus=1`` moves the refiner onto a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ray import serve
from ray.serve import Application

from inference.serving.access import KEYS_ENV, is_loopback, load_key_digests
from inference.serving.api import VideoAPI
from inference.serving.stages import BaseStage, RefinerStage
from inference.serving.store import JobStore
from pipeline.config.loader import ConfigError, load_config
from pipeline.config.schema import Config, DeploymentConfig, ServingConfig
from pipeline.ray_runtime import init_ray

APP_NAME = "i2vgen"
_ARGS = {"base", "refiner", "preset", "config", "set"}


def deployment_options(deployment: DeploymentConfig) -> dict[str, Any]:
    """Serve options of a stage: fixed replicas, or autoscaling aimed at full batches."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": deployment.num_cpus, "num_gpus": deployment.num_gpus},
        "max_ongoing_requests": deployment.max_ongoing_requests,
    }
    if deployment.min_replicas == deployment.max_replicas:
        options["num_replicas"] = deployment.max_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": deployment.min_replicas,
            "max_replicas": deployment.max_replicas,
            "target_ongoing_requests": deployment.max_batch_size,
        }
    return options


def results_uri(serving: ServingConfig) -> str:
    """``serving.results_dir`` as every replica will see it: a relative folder is taken from
    where the application is built, not from each worker's own directory."""
    location = serving.results_dir
    return location if "://" in location else str(Path(location).expanduser().resolve())


def compose(config: Config, base: str, refiner: Optional[str]) -> Application:
    """Ingress -> job store -> base -> refiner; the last stage writes the mp4s."""
    results, limits = results_uri(config.serving), config.serving
    base_app = BaseStage.options(**deployment_options(limits.base)).bind(
        config, base, results, refiner is None
    )
    refiner_app = (
        None if refiner is None
        else RefinerStage.options(**deployment_options(limits.refiner)).bind(config, refiner, results, True)
    )
    # Every pending job may hold one ``wait`` (a synchronous request) besides the short calls.
    calls = 2 * limits.max_pending_jobs + 64
    store = JobStore.options(max_ongoing_requests=calls).bind(limits, results, base_app, refiner_app)
    return VideoAPI.options(
        max_ongoing_requests=calls, max_queued_requests=limits.max_queued_requests,
        ray_actor_options={"num_cpus": limits.ingress_num_cpus},
    ).bind(store, config, results, refiner is not None, load_key_digests(limits))


def build_app(args: dict[str, Any]) -> Application:
    """The application builder ``serve_config.yaml`` points at."""
    return compose(_config(args), str(args["base"]), args.get("refiner"))


def _config(args: dict[str, Any]) -> Config:
    """The app's config from its builder arguments, which are checked first."""
    unknown = set(args) - _ARGS
    if unknown:
        raise ConfigError(f"args.{sorted(unknown)[0]}: unknown; the app takes {sorted(_ARGS)}")
    if not args.get("base"):
        raise ConfigError("args.base: the base stage's weights file is required")
    return load_config(args.get("preset", "tiny"), args.get("config") or [], args.get("set") or [])


def bind_host(serving: ServingConfig, host: str) -> str:
    """Where to listen: ``host``, unless no API keys are configured, which keeps the
    endpoint on 127.0.0.1 (and says so)."""
    if load_key_digests(serving) or is_loopback(host):
        return host
    print(f"no API keys are configured (serving.api_keys_file, {KEYS_ENV}): listening on 127.0.0.1 only, "
          f"not on {host}", flush=True)
    return "127.0.0.1"


def run_locally(
    base: str, refiner: Optional[str], preset: str, files: Sequence[str], overrides: Sequence[str],
    host: str, port: int,
) -> None:
    """``i2vgen serve``: the app on this machine's Ray, until interrupted."""
    args = {"base": base, "refiner": refiner, "preset": preset, "config": list(files), "set": list(overrides)}
    config = _config(args)
    host = bind_host(config.serving, host)
    init_ray()
    serve.start(http_options={"host": host, "port": port})
    app = compose(config, base, refiner)
    access = "API keys required" if load_key_digests(config.serving) else "no API keys: this machine only"
    print(f"serving on http://{host}:{port} ({access}; API docs at /docs); Ctrl-C stops", flush=True)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=True)
