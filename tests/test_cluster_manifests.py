"""Static checks of the cluster manifests in ``clusters/`` and of ``inference/serve_config.yaml``.

No cluster is started. A manifest is only exercised on a real cluster, where a typo costs
a node start (or a GPU hour), so these tests catch here what would fail there: YAML that
does not parse, fields the cluster launcher, KubeRay or Ray Serve require, a Ray version
other than the installed one, a ``python -m pipeline`` command the CLI would refuse, an
``import_path`` that does not import, and shell operators that would run in the wrong place.
Also what keeps the clusters closed: token auth on every cluster, no dashboard on a public
address, the head's own IAM policy, the NetworkPolicy, and no file outside tests/ that turns
Ray's authentication off.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
KUBERAY = CLUSTERS / "kuberay"
SERVE_CONFIG = ROOT / "inference" / "serve_config.yaml"
README = CLUSTERS / "README.md"
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
EXPECTED_FILES = {
    "cluster.yaml", "runtime_env.yaml", "kuberay/pvc.yaml", "kuberay/raycluster.yaml",
    "kuberay/rayjob-curation.yaml", "kuberay/rayjob-training.yaml", "kuberay/rayservice.yaml",
    "kuberay/networkpolicy.yaml",
}
HEAD_POLICY = CLUSTERS / "aws" / "head-policy.json"
HEAD_PORTS = {6379, 8265, 10001, 8000}  # GCS, dashboard and job API, Ray Client, Serve


# ---------------------------------------------------------------------------------- loading


def yaml_files() -> list[Path]:
    """Every YAML file the clusters folder holds, plus the Serve config it mirrors."""
    return sorted(CLUSTERS.rglob("*.yaml")) + [SERVE_CONFIG]


def documents(path: Path) -> list[Any]:
    """All non-empty documents of a (possibly multi-document) YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def kuberay_documents() -> list[tuple[Path, dict[str, Any]]]:
    """The Ray custom resources among the KubeRay files (the PVC is plain Kubernetes)."""
    found = []
    for path in sorted(KUBERAY.rglob("*.yaml")):
        for doc in documents(path):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("ray.io"):
                found.append((path, doc))
    return found


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec inside a RayCluster, RayJob or RayService."""
    if doc["kind"] == "RayJob":
        return doc["spec"]["rayClusterSpec"]
    if doc["kind"] == "RayService":
        return doc["spec"]["rayClusterConfig"]
    return doc["spec"]


def serve_configs() -> list[tuple[str, dict[str, Any]]]:
    """The Serve config file and every RayService's embedded serveConfigV2, parsed."""
    configs = [(str(SERVE_CONFIG.relative_to(ROOT)), documents(SERVE_CONFIG)[0])]
    for path, doc in kuberay_documents():
        if doc["kind"] == "RayService":
            configs.append((f"{path.relative_to(ROOT)} serveConfigV2", yaml.safe_load(doc["spec"]["serveConfigV2"])))
    return configs


def walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted path, key, value) of every mapping entry, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            yield here, str(key), value
            yield from walk(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


# ---------------------------------------------------------------------------------- parsing


def test_the_expected_files_exist() -> None:
    present = {str(p.relative_to(CLUSTERS)) for p in CLUSTERS.rglob("*.yaml")}
    assert EXPECTED_FILES <= present, f"missing: {sorted(EXPECTED_FILES - present)}"
    assert README.is_file()


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path}: no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


# ------------------------------------------------------------------------- cluster launcher


def test_cluster_launcher_config_has_what_ray_up_requires() -> None:
    config = documents(CLUSTERS / "cluster.yaml")[0]
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in config, f"cluster.yaml: {key} missing"
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types, "head_node_type must name one of available_node_types"
    for name, node_type in types.items():
        for key in ("node_config", "resources", "min_workers", "max_workers"):
            assert key in node_type, f"available_node_types.{name}.{key} missing"
        assert node_type["node_config"].get("InstanceType"), f"{name}: node_config.InstanceType missing"
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], f"{name}: needs 0 <= min <= max"
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0, "the head must not take tasks"
    workers = [t for n, t in types.items() if n != config["head_node_type"]]
    assert sum(t["max_workers"] for t in workers) <= config["max_workers"]
    for name, node_type in types.items():
        if node_type["resources"].get("GPU"):
            assert node_type.get("docker", {}).get("worker_image", "").endswith("-gpu"), f"{name}: GPU needs the -gpu image"
    # The repository is synced to every node and installed there, and so is the token.
    assert config["file_mounts"] == {"~/i2vgen": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    assert any("pip install" in c and "-e ~/i2vgen" in c for c in config["setup_commands"])


def test_cluster_launcher_config_passes_rays_own_validation() -> None:
    """What `ray up` runs before it contacts the cloud: defaults merged, then the JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(documents(CLUSTERS / "cluster.yaml")[0]))


# ---------------------------------------------------------------------------------- KubeRay


def _pod_spec_checks(where: str, template: dict[str, Any]) -> None:
    spec = template["spec"]
    container = spec["containers"][0]
    assert container.get("image"), f"{where}: template.spec.containers[0].image missing"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in volumes, f"{where}: volumeMount {mount['name']} has no volume"
    limits = container.get("resources", {}).get("limits", {})
    if limits.get("nvidia.com/gpu"):
        assert container["image"].endswith("-gpu"), f"{where}: a GPU pod needs the -gpu image"
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])), f"{where}: no GPU toleration"


def _cluster_spec_checks(where: str, spec: dict[str, Any]) -> None:
    assert "rayVersion" in spec, f"{where}: rayVersion missing"
    head = spec["headGroupSpec"]
    params = head.get("rayStartParams", {})
    assert all(isinstance(v, str) for v in params.values()), f"{where}: rayStartParams values must be strings"
    assert params.get("num-cpus") == "0", f"{where}: the head must not take tasks"
    _pod_spec_checks(f"{where} head", head["template"])
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no workerGroupSpecs"
    for group in groups:
        name = group["groupName"]
        low, high = group["minReplicas"], group["maxReplicas"]
        assert 0 <= low <= high, f"{where} {name}: needs minReplicas <= maxReplicas"
        assert low <= group.get("replicas", low) <= high, f"{where} {name}: replicas outside the bounds"
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())
        _pod_spec_checks(f"{where} {name}", group["template"])


def test_kuberay_resources_have_the_fields_kuberay_requires() -> None:
    docs = kuberay_documents()
    kinds = [doc.get("kind") for _, doc in docs]
    assert sorted(kinds) == ["RayCluster", "RayJob", "RayJob", "RayService"], kinds
    for path, doc in docs:
        where = f"{path.relative_to(ROOT)} ({doc.get('kind')})"
        assert doc["apiVersion"] == "ray.io/v1", where
        assert doc["kind"] in KUBERAY_KINDS, where
        assert doc["metadata"]["name"], where
        _cluster_spec_checks(where, cluster_spec(doc))
        if doc["kind"] == "RayCluster":
            assert {g["groupName"] for g in doc["spec"]["workerGroupSpecs"]} == {"cpu-curation", "gpu-train", "gpu-serve"}


def test_rayjobs_submit_one_command_with_a_valid_runtime_env() -> None:
    from ray.runtime_env import RuntimeEnv

    jobs = [(path, doc) for path, doc in kuberay_documents() if doc["kind"] == "RayJob"]
    for path, doc in jobs:
        spec = doc["spec"]
        assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip(), path
        assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "SidecarMode"}, path
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0, path
        # KubeRay pastes the entrypoint into the submitter's `bash -c "... ray job submit ... -- <entrypoint> ;"`:
        # a bare operator would end the submit command and run the rest in the submitter pod.
        assert not shell_operators(spec["entrypoint"]), f"{path}: wrap chained commands in bash -c '...'"
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        RuntimeEnv(**runtime_env)
        assert all(isinstance(v, str) for v in runtime_env.get("env_vars", {}).values()), path
        # The submitter pod has no checkout: a working_dir must be a URI Ray can download.
        if "working_dir" in runtime_env:
            assert re.match(r"^(https?|s3|gs)://.+\.zip$", runtime_env["working_dir"]), path


def test_every_volume_claim_is_the_shared_pvc() -> None:
    (pvc,) = documents(KUBERAY / "pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    claims = [v for _, doc in kuberay_documents() for _, key, v in walk(doc) if key == "persistentVolumeClaim"]
    assert claims and all(c["claimName"] == pvc["metadata"]["name"] for c in claims)


# ----------------------------------------------------------------------------- Ray versions


def test_every_image_and_ray_version_is_the_installed_ray() -> None:
    import ray

    version = ray.__version__
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    pin = re.search(r'"ray\[[^\]]*\]==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin and pin.group(1) == version, "the installed Ray is not the one pyproject.toml pins"

    images, versions = [], []
    for path in sorted(CLUSTERS.rglob("*.yaml")):
        for doc in documents(path):
            for where, key, value in walk(doc):
                if key in {"image", "worker_image", "head_image"}:
                    images.append((f"{path.name}:{where}", value))
                if key == "rayVersion":
                    versions.append((f"{path.name}:{where}", value))
    # Images named in prose and comments too (README's Dockerfile, "replace with ..." notes).
    for path in sorted(CLUSTERS.rglob("*")):
        if path.suffix in {".yaml", ".md"}:
            for tag in re.findall(r"rayproject/ray:([\w.\-]+)", path.read_text(encoding="utf-8")):
                images.append((path.name, f"rayproject/ray:{tag}"))
    assert len(images) >= 10 and len(versions) >= 4
    allowed = {f"rayproject/ray:{version}-{python}", f"rayproject/ray:{version}-{python}-gpu"}
    for where, image in images:
        assert image in allowed, f"{where}: {image} is not one of {sorted(allowed)}"
    for where, value in versions:
        assert str(value) == version, f"{where}: rayVersion {value} != installed Ray {version}"


# --------------------------------------------------------------------------- CLI commands


def shell_operators(command: str) -> list[str]:
    """Top-level shell control operators in a command line (quoted ones do not count)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    return [token for token in lexer if token in SHELL_OPERATORS]


def pipeline_invocations(command: str) -> list[list[str]]:
    """The argument lists of every ``python -m pipeline ...`` in a shell command line,
    split at control operators, looking inside ``bash -c '...'``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    found = []
    for words in segments:
        if words[:1] in (["bash"], ["sh"]) and words[1:2] == ["-c"] and len(words) > 2:
            found.extend(pipeline_invocations(words[2]))
            continue
        for i in range(len(words) - 2):
            if words[i].startswith("python") and words[i + 1 : i + 3] == ["-m", "pipeline"]:
                found.append(words[i + 3 :])
                break
    return found


def readme_commands() -> list[str]:
    """The command lines in the README's shell code blocks, continuation lines joined."""
    blocks: list[list[str]] = []
    language: Optional[str] = None  # None: outside a fence
    for line in README.read_text(encoding="utf-8").splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            language = fence[3:].strip() if language is None else None
            if language in ("", "bash", "sh", "shell"):
                blocks.append([])
        elif language in ("", "bash", "sh", "shell"):
            blocks[-1].append(line)
    commands = []
    for block in blocks:
        joined = "\n".join(block).replace("\\\n", " ")
        commands.extend(line.strip() for line in joined.splitlines() if line.strip())
    return commands


def commands_to_check() -> list[tuple[str, list[str]]]:
    """(where, argv after ``python -m pipeline``) from every RayJob and the README."""
    found = []
    for path, doc in kuberay_documents():
        if doc["kind"] == "RayJob":
            found += [(path.name, argv) for argv in pipeline_invocations(doc["spec"]["entrypoint"])]
    for line in readme_commands():
        found += [(f"README: {line[:60]}", argv) for argv in pipeline_invocations(line)]
    return found


def _subcommands(parser) -> set[str]:
    import argparse

    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


def test_every_pipeline_command_is_one_the_cli_accepts() -> None:
    from commands.main import build_parser
    from pipeline.config.loader import load_config

    commands = commands_to_check()
    subcommands = {argv[0] for _, argv in commands if argv}
    assert {"curate", "train", "export"} <= subcommands, f"expected curate, train and export; found {subcommands}"
    known = _subcommands(build_parser())
    for where, argv in commands:
        assert argv and argv[0] in known, f"{where}: {argv[:1]} is not a subcommand of {sorted(known)}"
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as err:
            pytest.fail(f"{where}: the CLI refuses {shlex.join(argv)} (exit {err.code})")
        if getattr(args, "set", None):
            load_config(args.preset, args.config, args.set)  # every --set names a real key and type


def test_readme_submits_one_command_per_job() -> None:
    """After ``ray job submit ... --`` a ``&&`` would run on the submitting machine."""
    for line in readme_commands():
        if "ray job submit" in line and " -- " in line:
            assert not shell_operators(line.split(" -- ", 1)[1]), line


def test_a_chained_entrypoint_survives_the_ray_cli_quoting() -> None:
    """``ray job submit -- bash -c '...'`` reaches the cluster as the same words (the CLI
    joins its arguments with shlex.join), so both halves of the chain run there."""
    for path, doc in kuberay_documents():
        if doc["kind"] == "RayJob":
            words = shlex.split(doc["spec"]["entrypoint"])
            assert shlex.split(shlex.join(words)) == words, path


# ----------------------------------------------------------------------------- Serve configs


def _resolve(import_path: str) -> Optional[Any]:
    module, _, attr = import_path.partition(":")
    assert module and attr, f"{import_path}: expected module:attribute"
    return getattr(importlib.import_module(module), attr, None)


def test_serve_configs_pass_serve_schema_and_their_import_paths_resolve() -> None:
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    configs = serve_configs()
    assert len(configs) == 2
    for where, config in configs:
        ServeDeploySchema.model_validate(config)  # incl. remote-URI-only working_dir
        apps = config["applications"]
        assert apps and apps[0].get("import_path"), f"{where}: applications[0].import_path missing"
        for app in apps:
            builder = _resolve(app["import_path"])
            assert callable(builder), f"{where}: {app['import_path']} is not callable"
            # The builder validates its args and every override; it binds, loads no weights.
            assert isinstance(builder(app.get("args", {})), Application), where


def test_the_rayservice_serves_the_same_application_as_serve_config() -> None:
    (_, local), (_, embedded) = serve_configs()
    a, b = local["applications"][0], embedded["applications"][0]
    for key in ("name", "route_prefix", "import_path"):
        assert a[key] == b[key], key
    assert a["args"]["preset"] == b["args"]["preset"]
    assert b["args"]["base"].startswith("/data/exports/") and b["args"]["refiner"].startswith("/data/exports/")
    # The results location is where each platform keeps shared files; every other knob agrees.
    knobs = lambda sets: sorted(s for s in sets if s.startswith("serving.") and "results_dir" not in s)  # noqa: E731
    assert knobs(a["args"]["set"]) == knobs(b["args"]["set"])


# ----------------------------------------------------------------------------- runtime_env


def test_runtime_env_file_is_valid_and_uploads_only_code() -> None:
    from ray._private.runtime_env.packaging import create_package
    from ray.runtime_env import RuntimeEnv

    env = documents(CLUSTERS / "runtime_env.yaml")[0]
    assert env.get("working_dir") == "."
    assert isinstance(env.get("env_vars"), dict) and env["env_vars"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env["env_vars"].items()), "env_vars must be strings"
    # pipeline train sets DS_ACCELERATOR from train.use_gpu; a value here would override it.
    assert "DS_ACCELERATOR" not in env["env_vars"]
    for pattern in ("/.venv/", "/.git/", "/benchmarks/results/", "/runs/", "/data/", "*.lance"):
        assert pattern in env["excludes"], f"excludes: {pattern} missing"
    RuntimeEnv(**env)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "package.zip"
        create_package(str(ROOT), package, include_gitignore=True, excludes=env["excludes"])
        names = zipfile.ZipFile(package).namelist()
    assert "commands/main.py" in names and "pyproject.toml" in names
    for prefix in (".venv/", ".git/", "runs/", "data/", "benchmarks/results/"):
        assert not any(n.startswith(prefix) for n in names), f"{prefix} would be uploaded"
    assert not any(".lance/" in n for n in names)


# ------------------------------------------------------------------------------ authentication


def test_every_kuberay_cluster_requires_a_token() -> None:
    for path, doc in kuberay_documents():
        assert cluster_spec(doc).get("authOptions") == {"mode": "token"}, f"{path.name}: authOptions.mode token"


def test_the_launcher_cluster_requires_a_token_and_keeps_its_dashboard_local() -> None:
    config = documents(CLUSTERS / "cluster.yaml")[0]
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]  # every container, every node
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    (start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in json.dumps(config)


def test_the_head_has_its_own_least_privilege_profile() -> None:
    """Not Ray's default ray-autoscaler-v1 (EC2 and S3 full access): describe, launch
    instances tagged for this cluster, and tag or terminate only those."""
    config = documents(CLUSTERS / "cluster.yaml")[0]
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    assert head["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    statements = json.loads(HEAD_POLICY.read_text())["Statement"]
    actions = {a for s in statements for a in _actions(s)}
    assert not any(a == "*" or a.endswith(":*") for a in actions), "no wildcard actions"
    assert {a.split(":")[0] for a in actions} == {"ec2"}  # no S3, no IAM (workers get no role to pass)
    writes = [s for s in statements if not all(a.startswith("ec2:Describe") for a in _actions(s))]
    tag = {"ec2:ResourceTag/ray-cluster-name": config["cluster_name"]}
    for statement in writes:
        instances = statement["Resource"] == "arn:aws:ec2:us-west-2:*:instance/*"
        assert not instances or statement.get("Condition"), f"{statement['Sid']}: instances need a condition"
    (terminate,) = [s for s in writes if "ec2:TerminateInstances" in s["Action"]]
    assert terminate["Condition"]["StringEquals"] == tag


def _actions(statement: dict[str, Any]) -> list[str]:
    return [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]


def test_the_network_policy_covers_every_ray_pod_and_opens_the_head_ports_to_few() -> None:
    (policy,) = documents(KUBERAY / "networkpolicy.yaml")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    templates = [value for _, doc in kuberay_documents()
                 for _, key, value in walk(cluster_spec(doc)) if key == "template"]
    assert len(templates) == 10  # 4 RayCluster groups, 2 per RayJob, 2 for the RayService
    for template in templates:
        labels = template.get("metadata", {}).get("labels", {})
        assert selected.items() <= labels.items(), "a Ray pod the policy does not select"
    own, *others = policy["spec"]["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": selected}}]}  # the clusters' own pods, any port
    for rule in others:
        assert {p["port"] for p in rule["ports"]} <= HEAD_PORTS
    jobs = {doc["metadata"]["name"] for _, doc in kuberay_documents() if doc["kind"] == "RayJob"}
    submitters = [expression for rule in others for peer in rule["from"]
                  for expression in peer.get("podSelector", {}).get("matchExpressions", [])]
    assert [set(e["values"]) for e in submitters if e["key"] == "job-name"] == [jobs]


def test_nothing_outside_the_tests_turns_ray_authentication_off() -> None:
    """Every file git has or would add outside tests/ (code, Makefile, benchmarks, demo,
    manifests, docs) names the auth mode only to ask for tokens, where Ray 2.60 needs it
    said: worker nodes and drivers that join by address. Only the test suite turns it off."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    mentions = [(f"{name}:{number}", line.strip()) for name in names if not name.startswith("tests/")
                and (ROOT / name).is_file()
                for number, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1)
                if "RAY_AUTH_MODE" in line]
    assert any(where.startswith("clusters/cluster.yaml") for where, _ in mentions)  # the search reads them
    wrong = [(where, line) for where, line in mentions
             if not re.search(r"RAY_AUTH_MODE\W{1,4}token\b", line) or "disabled" in line]
    assert not wrong, f"only tests/ may choose another auth mode: {wrong}"
    assert "RAY_AUTH_MODE" not in (ROOT / "Makefile").read_text()
