"""The cluster configs in cluster/ and the commands in docs/cluster.md, checked without a cloud.

* cluster/aws.yaml and cluster/gcp.yaml are validated against the JSON schema that ships in the
  installed ray package (the one `ray up` uses), and against the properties the platform relies
  on: a CPU-only on-demand head, GPU workers on spot / preemptible capacity scaling from zero,
  setup that installs this project, MLflow and the dashboard bound to loopback.
* cluster/kuberay-rayjob.yaml is checked for the fields KubeRay's RayJob / RayCluster types
  define and require, and its entrypoint is parsed with the real CLI parser.
* Every `run_ablation.py` command in docs/cluster.md is parsed the same way.

Each property check is a function returning a list of problems, so the tests can show that a
broken copy is caught, not just that the shipped files pass.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
DOCS = ROOT / "docs" / "cluster.md"
LAUNCHER = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
OBJECT_STORE = {"aws": "s3://", "gcp": "gs://"}
RAYJOB_FILE = CLUSTER / "kuberay-rayjob.yaml"
STUDY = "ablations/invariance_weight.yaml"


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray

    path = os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    with open(path) as f:
        return json.load(f)


def load_launcher(provider: str) -> dict:
    return yaml.safe_load(LAUNCHER[provider].read_text())


def load_manifests() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(RAYJOB_FILE.read_text()) if doc]


def load_rayjob(docs: list[dict] | None = None) -> dict:
    jobs = [d for d in (docs or load_manifests()) if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, f"expected one RayJob in {RAYJOB_FILE}, found {len(jobs)}"
    return jobs[0]


def readme_torch_pins() -> dict[str, str]:
    pins = dict(re.findall(r"\b(torch|torchvision)==([0-9][\w.+-]*)", (ROOT / "README.md").read_text()))
    assert set(pins) == {"torch", "torchvision"}, "README.md no longer pins torch and torchvision"
    return pins


def study_resources() -> tuple[float, float]:
    from icd_tune.platform.study.definition import load_study

    settings = load_study(ROOT / STUDY).settings
    return float(settings.cpus_per_trial), float(settings.gpus_per_trial)


def all_commands(cfg: dict) -> list[str]:
    keys = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands"]
    cmds = [c for k in keys for c in cfg.get(k) or []]
    for node in cfg.get("available_node_types", {}).values():
        for k in ("initialization_commands", "worker_setup_commands"):
            cmds += node.get(k) or []
    return cmds


def worker_types(cfg: dict) -> dict[str, dict]:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def option(tokens: list[str], name: str) -> str | None:
    """Value of ``--name VALUE`` or ``--name=VALUE`` in a token list (last one wins)."""
    value = None
    for i, tok in enumerate(tokens):
        if tok == name and i + 1 < len(tokens):
            value = tokens[i + 1]
        elif tok.startswith(name + "="):
            value = tok[len(name) + 1:]
    return value


def run_ablation_args(command: str) -> list[str] | None:
    """The arguments after run_ablation.py in a shell command line, or None if it does not run it."""
    tokens = shlex.split(command, comments=True)
    for i, tok in enumerate(tokens):
        if tok.endswith("run_ablation.py"):
            args = []
            for t in tokens[i + 1:]:
                if t in ("&&", "||", ";", "|", "&"):
                    break
                args.append(t)
            return args
    return None


def cli_problems(args: list[str], where: str, cluster: bool) -> list[str]:
    """Parse with the real CLI parser and load the study with its --set overrides."""
    from icd_tune.platform.cli.main import build_parser
    from icd_tune.method.schema import ConfigError
    from icd_tune.platform.study.definition import load_study

    problems = []
    try:
        ns = build_parser().parse_args(args)
    except SystemExit:
        return [f"{where}: run_ablation.py rejects the arguments {args}"]
    if not (ROOT / ns.study).is_file():
        return [f"{where}: study file {ns.study} does not exist"]
    try:
        load_study(ROOT / ns.study, ns.set)
    except ConfigError as err:
        problems.append(f"{where}: {err}")
    if cluster:
        if not ns.address:
            problems.append(f"{where}: a cluster run needs --address (e.g. auto)")
        if not ns.storage or urlparse(ns.storage).scheme not in ("s3", "gs"):
            problems.append(f"{where}: --storage must be an s3:// or gs:// URI every node can reach, got {ns.storage!r}")
        if any(item.replace(" ", "") in ("teacher.cache=on", "teacher.cache=true") for item in ns.set):
            problems.append(f"{where}: a multi-node run must not force the node-local teacher-output cache on")
    return problems


# --------------------------------------------------------------------------------------------
# cluster launcher configs (ray up)


def launcher_problems(cfg: dict, provider: str) -> list[str]:
    """What the platform relies on, beyond the schema; [] when all is well."""
    p: list[str] = []
    types = cfg.get("available_node_types", {})
    head_name = cfg.get("head_node_type")
    if head_name not in types:
        return [f"head_node_type {head_name!r} is not one of available_node_types {sorted(types)}"]
    head = types[head_name]
    workers = worker_types(cfg)
    cpus_per_trial, gpus_per_trial = study_resources()

    # Head: CPU only, on-demand.
    if head.get("resources", {}).get("GPU", 0) != 0:
        p.append("the head node type advertises GPUs")
    hc = head.get("node_config", {})
    if provider == "aws":
        if re.match(r"(g|p|inf|trn|dl)\d", hc.get("InstanceType", "")):
            p.append(f"the head instance type {hc.get('InstanceType')} is an accelerated type")
        if "InstanceMarketOptions" in hc:
            p.append("the head runs on spot; it holds the driver and MLflow and must be on-demand")
    else:
        if hc.get("guestAccelerators") or re.match(r"(a2|a3|g2)-", hc.get("machineType", "")):
            p.append("the head machine has GPUs")
        sched = hc.get("scheduling") or {}
        if isinstance(sched, dict) and (sched.get("preemptible") or sched.get("provisioningModel") == "SPOT"):
            p.append("the head is preemptible; it holds the driver and MLflow and must be standard")

    # Workers: GPU, spot/preemptible, from zero.
    if not workers:
        p.append("no worker node types")
    for name, node in workers.items():
        res = node.get("resources", {})
        if res.get("GPU", 0) < max(1, gpus_per_trial):
            p.append(f"worker type {name} advertises no GPU: {res}")
        if res.get("CPU", 0) < cpus_per_trial:
            p.append(f"worker type {name} has {res.get('CPU')} CPUs, fewer than the study's cpus_per_trial {cpus_per_trial}")
        if node.get("min_workers", 0) != 0:
            p.append(f"worker type {name} has min_workers {node.get('min_workers')}; the cluster must scale from zero")
        if node.get("max_workers", cfg.get("max_workers", 0)) < 1:
            p.append(f"worker type {name} can never start (max_workers < 1)")
        nc = node.get("node_config", {})
        if provider == "aws":
            if (nc.get("InstanceMarketOptions") or {}).get("MarketType") != "spot":
                p.append(f"worker type {name} is not spot (InstanceMarketOptions.MarketType)")
        else:
            sched = nc.get("scheduling")
            if not isinstance(sched, dict):
                p.append(f"worker type {name}: scheduling must be a mapping for the GCE API, got {type(sched).__name__}")
            else:
                if not (sched.get("preemptible") is True or sched.get("provisioningModel") == "SPOT"):
                    p.append(f"worker type {name} is neither preemptible nor spot")
                if sched.get("onHostMaintenance") != "TERMINATE":
                    p.append(f"worker type {name}: GPU VMs need scheduling.onHostMaintenance TERMINATE")
            if not (nc.get("guestAccelerators") or re.match(r"(a2|a3|g2)-", nc.get("machineType", ""))):
                p.append(f"worker type {name} has no GPU attached (guestAccelerators)")
    if not cfg.get("max_workers", 0) >= 1:
        p.append("global max_workers must be >= 1")
    if not cfg.get("idle_timeout_minutes", 0) > 0:
        p.append("idle_timeout_minutes must be set (> 0) so idle GPU workers are released")

    # The project: synced from the repo root, installed after the pinned torch pair.
    mounts = cfg.get("file_mounts") or {}
    remote = next((r for r, local in mounts.items() if local in (".", "./")), None)
    if remote is None:
        p.append("file_mounts does not sync the repository root ('.') to the nodes")
    if ".gitignore" not in (cfg.get("rsync_filter") or []):
        p.append("rsync_filter lacks .gitignore: .venv, results and data would be uploaded")
    setup = cfg.get("setup_commands") or []
    pins = readme_torch_pins()
    torch_at = next((i for i, c in enumerate(setup) if f"torch=={pins['torch']}" in c
                     and f"torchvision=={pins['torchvision']}" in c), None)
    project_at = next((i for i, c in enumerate(setup)
                       if remote and re.search(r"pip install .*-e\s+" + re.escape(remote) + r"/?(\s|$)", c)), None)
    if torch_at is None:
        p.append(f"setup_commands do not install torch=={pins['torch']} torchvision=={pins['torchvision']} (README's pins)")
    if project_at is None:
        p.append(f"setup_commands do not `pip install -e {remote}`")
    if torch_at is not None and project_at is not None and torch_at > project_at:
        p.append("the project is installed before the pinned torch pair (pip would pull another torch)")

    # MLflow on loopback, artifacts in the provider's object store.
    head_cmds = (cfg.get("head_setup_commands") or []) + (cfg.get("head_start_ray_commands") or [])
    mlflow = [c for c in head_cmds if "mlflow server" in c]
    if len(mlflow) != 1:
        p.append(f"expected one `mlflow server` command on the head, found {len(mlflow)}")
    for c in mlflow:
        tokens = shlex.split(c.replace("'", " "))
        if option(tokens, "--host") != "127.0.0.1":
            p.append(f"the MLflow server must bind 127.0.0.1, not {option(tokens, '--host')!r}")
        if not (option(tokens, "--backend-store-uri") or "").startswith("sqlite:////"):
            p.append("the MLflow backend store is not an absolute sqlite path")
        if not (option(tokens, "--artifacts-destination") or "").startswith(OBJECT_STORE[provider]):
            p.append(f"MLflow artifacts must go to {OBJECT_STORE[provider]}...")
    starts = [c for c in cfg.get("head_start_ray_commands") or [] if "ray start" in c]
    if not starts or "--dashboard-host=127.0.0.1" not in starts[-1].replace("--dashboard-host 127.0.0.1", "--dashboard-host=127.0.0.1"):
        p.append("the head's `ray start` must bind the dashboard to 127.0.0.1")
    for c in all_commands(cfg):
        if "0.0.0.0" in c:
            p.append(f"a command binds to all interfaces: {c}")
    if "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in json.dumps(cfg):
        p.append("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER must not be set on cluster nodes (they talk over the VPC)")
    return p


@pytest.mark.parametrize("provider", sorted(LAUNCHER))
def test_launcher_config_matches_ray_schema(provider, ray_schema):
    jsonschema.validate(load_launcher(provider), ray_schema)


BREAKAGES = {
    "unknown top-level key": lambda c: c.update(max_worker=4),
    "max_workers of the wrong type": lambda c: c.update(max_workers="eight"),
    "negative idle timeout": lambda c: c.update(idle_timeout_minutes=-5),
    "node type without resources": lambda c: c["available_node_types"][c["head_node_type"]].pop("resources"),
    "unknown docker key": lambda c: c["docker"].update(imag="rayproject/ray"),
    "setup command that is not a string": lambda c: c["setup_commands"].append(["pip", "install"]),
}


@pytest.mark.parametrize("provider", sorted(LAUNCHER))
@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_schema_rejects_a_broken_copy(provider, breakage, ray_schema):
    cfg = copy.deepcopy(load_launcher(provider))
    BREAKAGES[breakage](cfg)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, ray_schema)


@pytest.mark.parametrize("provider", sorted(LAUNCHER))
def test_ray_accepts_the_config_as_ray_up_prepares_it(provider):
    """Ray's own preparation (provider defaults merged in) and validation, as `ray up` runs them."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as err:  # private API; the schema test above still runs
        pytest.skip(f"ray's config helpers moved: {err}")
    validate_config(prepare_config(load_launcher(provider)))


@pytest.mark.parametrize("provider", sorted(LAUNCHER))
def test_launcher_config_has_what_the_platform_relies_on(provider):
    assert launcher_problems(load_launcher(provider), provider) == []


def _head(c):
    return c["available_node_types"][c["head_node_type"]]


def _workers(c):
    return list(worker_types(c).values())


def _mlflow_on_all_interfaces(c):
    c["head_start_ray_commands"] = [x.replace("--host 127.0.0.1", "--host 0.0.0.0") for x in c["head_start_ray_commands"]]


def _no_spot(c):
    for w in _workers(c):
        w["node_config"].pop("InstanceMarketOptions", None)
        w["node_config"].pop("scheduling", None)


LAUNCHER_BREAKAGES = {
    "head with a GPU": lambda c: _head(c)["resources"].update(GPU=1),
    "worker without a GPU": lambda c: _workers(c)[0]["resources"].pop("GPU"),
    "workers on demand": _no_spot,
    "workers kept warm": lambda c: _workers(c)[0].update(min_workers=1),
    "project not installed": lambda c: c.update(setup_commands=c["setup_commands"][:1]),
    "other torch than README": lambda c: c.update(setup_commands=[x.replace("torch==", "torch==0.") for x in c["setup_commands"]]),
    "MLflow on all interfaces": _mlflow_on_all_interfaces,
    "dashboard on all interfaces": lambda c: c.update(head_start_ray_commands=[
        x.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0") for x in c["head_start_ray_commands"]]),
    "loopback-only Ray on the nodes": lambda c: c.update(setup_commands=c["setup_commands"] + [
        "echo 'export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0' >> ~/.bashrc"]),
    "git-ignored files uploaded": lambda c: c.update(rsync_filter=[]),
}


@pytest.mark.parametrize("provider", sorted(LAUNCHER))
@pytest.mark.parametrize("breakage", sorted(LAUNCHER_BREAKAGES))
def test_launcher_checks_catch_a_broken_copy(provider, breakage):
    cfg = copy.deepcopy(load_launcher(provider))
    LAUNCHER_BREAKAGES[breakage](cfg)
    assert launcher_problems(cfg, provider) != []


def test_gcp_scheduling_as_a_list_is_caught():
    # Older Ray examples wrote `scheduling: [- preemptible: true]`; GCE expects an object.
    cfg = load_launcher("gcp")
    for w in _workers(cfg):
        w["node_config"]["scheduling"] = [{"preemptible": True}, {"onHostMaintenance": "TERMINATE"}]
    assert any("must be a mapping" in p for p in launcher_problems(cfg, "gcp"))


# --------------------------------------------------------------------------------------------
# KubeRay RayJob

# json field names of KubeRay's ray.io/v1 Go types (rayjob_types.go, raycluster_types.go),
# plus a few fields newer releases added; anything else is a typo the API server would drop.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule", "waitingTtlSeconds",
}
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "authOptions", "upgradeStrategy",
}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy", "idleTimeoutSeconds", "suspend", "resources", "labels",
}
AUTOSCALER_FIELDS = {
    "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
    "idleTimeoutSeconds", "upscalingMode", "version",
}


def k8s_cpu(quantity) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def rayjob_problems(docs: list[dict]) -> list[str]:
    p: list[str] = []
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    if len(jobs) != 1:
        return [f"expected one RayJob, found {len(jobs)}"]
    job = jobs[0]
    if job.get("apiVersion") != "ray.io/v1":
        p.append(f"apiVersion is {job.get('apiVersion')!r}, not ray.io/v1")
    name = (job.get("metadata") or {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name or "") or len(name) > 47:
        p.append(f"metadata.name {name!r} is not a short DNS-1123 label (KubeRay derives pod names from it)")
    spec = job.get("spec") or {}
    p += [f"spec.{k} is not a RayJob field" for k in sorted(set(spec) - RAYJOB_SPEC_FIELDS)]
    if not spec.get("shutdownAfterJobFinishes"):
        p.append("spec.shutdownAfterJobFinishes must be true (GPU pods must not outlive the study)")
    if not isinstance(spec.get("ttlSecondsAfterFinished"), int) or spec["ttlSecondsAfterFinished"] < 0:
        p.append("spec.ttlSecondsAfterFinished must be a non-negative integer")

    # runtime env, as Ray validates it
    env = {}
    try:
        from ray.runtime_env import RuntimeEnv

        env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        RuntimeEnv(**env)
    except Exception as err:
        p.append(f"spec.runtimeEnvYAML is not a valid Ray runtime env: {err}")
    if not env.get("working_dir") and "image_uri" not in env:
        p.append("the runtime env carries no code (working_dir) and no image_uri")
    elif env.get("working_dir") and urlparse(env["working_dir"]).scheme not in ("s3", "gs", "https"):
        p.append("working_dir must be a remote zip the cluster can fetch (the submitter pod has no local files)")

    # entrypoint
    args = run_ablation_args(spec.get("entrypoint") or "")
    if args is None:
        p.append("spec.entrypoint does not run run_ablation.py")
        args = []
    else:
        p += cli_problems(args, "spec.entrypoint", cluster=True)
    from icd_tune.platform.cli.main import build_parser

    try:
        ns = build_parser().parse_args(args) if args else None
    except SystemExit:
        ns = None

    services = {d["metadata"]["name"] for d in docs if d.get("kind") == "Service"}
    claims = {d["metadata"]["name"] for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    if ns is not None and ns.tracking_uri:
        host = urlparse(ns.tracking_uri).hostname
        if urlparse(ns.tracking_uri).scheme not in ("http", "https"):
            p.append("--tracking-uri must be an MLflow server (http://...) reachable from the head pod")
        elif host not in services and "." not in (host or ""):
            p.append(f"--tracking-uri names host {host!r}, but no Service of that name is defined here")

    cluster = spec.get("rayClusterSpec") or {}
    if not cluster:
        return p + ["spec.rayClusterSpec is missing"]
    p += [f"rayClusterSpec.{k} is not a RayCluster field" for k in sorted(set(cluster) - RAYCLUSTER_SPEC_FIELDS)]
    auto = cluster.get("autoscalerOptions") or {}
    p += [f"autoscalerOptions.{k} is not a field" for k in sorted(set(auto) - AUTOSCALER_FIELDS)]
    if auto.get("upscalingMode") not in (None, "Default", "Aggressive", "Conservative"):
        p.append(f"autoscalerOptions.upscalingMode {auto.get('upscalingMode')!r} is not Default/Aggressive/Conservative")

    def pod_problems(where: str, template: dict) -> tuple[list[str], dict]:
        out = []
        pod = (template or {}).get("spec") or {}
        containers = pod.get("containers") or []
        if not containers or not containers[0].get("image"):
            return [f"{where}.template.spec.containers[0].image is missing"], {}
        for vol in pod.get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in claims:
                out.append(f"{where} mounts PersistentVolumeClaim {claim!r}, which is not defined here")
        return out, containers[0]

    head = cluster.get("headGroupSpec") or {}
    p += [f"headGroupSpec.{k} is not a field" for k in sorted(set(head) - HEAD_GROUP_FIELDS)]
    if not isinstance(head.get("rayStartParams"), dict):
        p.append("headGroupSpec.rayStartParams must be a mapping (KubeRay requires it)")
    hp, head_container = pod_problems("headGroupSpec", head.get("template"))
    p += hp
    if ((head_container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu"):
        p.append("the head pod asks for a GPU; it runs the driver only")

    groups = cluster.get("workerGroupSpecs") or []
    if not groups:
        p.append("rayClusterSpec.workerGroupSpecs is empty: no GPU workers")
    cpus_per_trial = float(option(args, "--cpus-per-trial") or study_resources()[0])
    for i, g in enumerate(groups):
        where = f"workerGroupSpecs[{i}]"
        p += [f"{where}.{k} is not a field" for k in sorted(set(g) - WORKER_GROUP_FIELDS)]
        if not g.get("groupName"):
            p.append(f"{where}.groupName is missing")
        counts = {k: g.get(k) for k in ("replicas", "minReplicas", "maxReplicas")}
        if not all(isinstance(v, int) and v >= 0 for v in counts.values()):
            p.append(f"{where}: replicas/minReplicas/maxReplicas must be non-negative integers, got {counts}")
        elif not counts["minReplicas"] <= counts["replicas"] <= counts["maxReplicas"]:
            p.append(f"{where}: need minReplicas <= replicas <= maxReplicas, got {counts}")
        elif counts["maxReplicas"] < 1:
            p.append(f"{where}: maxReplicas < 1, no worker can ever start")
        if not isinstance(g.get("rayStartParams"), dict):
            p.append(f"{where}.rayStartParams must be a mapping (KubeRay requires it)")
        wp, container = pod_problems(where, g.get("template"))
        p += wp
        limits = (container.get("resources") or {}).get("limits") or {}
        try:
            gpus = int(str(limits.get("nvidia.com/gpu", 0)))
        except ValueError:
            gpus = 0
        if gpus < 1:
            p.append(f"{where}: the container has no nvidia.com/gpu limit")
        if "cpu" in limits and k8s_cpu(limits["cpu"]) < cpus_per_trial:
            p.append(f"{where}: pods get {limits['cpu']} CPUs but trials ask for {cpus_per_trial}; none would start")
    return p


def test_rayjob_manifest_has_the_fields_kuberay_requires():
    assert rayjob_problems(load_manifests()) == []


def test_rayjob_images_match_the_installed_ray():
    """The cluster must run the Ray version the driver-side tools (ray job submit, ray up) speak."""
    import ray

    docs = load_manifests()
    job = load_rayjob(docs)
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    images = re.findall(r"rayproject/ray:([\w.]+)-", RAYJOB_FILE.read_text())
    for path in LAUNCHER.values():
        images += re.findall(r"rayproject/ray:([\w.]+)-", path.read_text())
    assert images and set(images) == {ray.__version__}


def _job(docs):
    return load_rayjob(docs)["spec"]


def _first_group(docs):
    return _job(docs)["rayClusterSpec"]["workerGroupSpecs"][0]


def _set_entrypoint(docs, old, new):
    _job(docs)["entrypoint"] = _job(docs)["entrypoint"].replace(old, new)


RAYJOB_BREAKAGES = {
    "wrong apiVersion": lambda d: load_rayjob(d).update(apiVersion="ray.io/v1alpha1"),
    "misspelt spec field": lambda d: _job(d).update(shutdownAfterJobFinish=True),
    "misspelt worker groups": lambda d: _job(d)["rayClusterSpec"].update(
        workerGroupSpec=_job(d)["rayClusterSpec"].pop("workerGroupSpecs")),
    "no head rayStartParams": lambda d: _job(d)["rayClusterSpec"]["headGroupSpec"].pop("rayStartParams"),
    "no head image": lambda d: _job(d)["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("image"),
    "min above max": lambda d: _first_group(d).update(minReplicas=9, replicas=9, maxReplicas=8),
    "replicas below min": lambda d: _first_group(d).update(minReplicas=2, replicas=1),
    "no group name": lambda d: _first_group(d).pop("groupName"),
    "no GPU limit": lambda d: _first_group(d)["template"]["spec"]["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"),
    "pods smaller than a trial": lambda d: _set_entrypoint(d, "--cpus-per-trial 3", "--cpus-per-trial 8"),
    "local storage": lambda d: _set_entrypoint(d, "--storage s3://", "--storage /tmp/"),
    "no address": lambda d: _set_entrypoint(d, "--address auto", ""),
    "unknown CLI flag": lambda d: _set_entrypoint(d, "--address auto", "--address auto --num-nodes 2"),
    "bad --set key": lambda d: _set_entrypoint(d, "teacher.checkpoint=", "teacher.checkpiont="),
    "not the study runner": lambda d: _set_entrypoint(d, "run_ablation.py", "train.py"),
    "tracking server not defined": lambda d: _set_entrypoint(d, "http://mlflow:5000", "http://tracking:5000"),
    "cluster kept after the job": lambda d: _job(d).update(shutdownAfterJobFinishes=False),
    "bad runtime env": lambda d: _job(d).update(runtimeEnvYAML="working_dir: s3://BUCKET/code/icd-tune.tar\n"),
}


@pytest.mark.parametrize("breakage", sorted(RAYJOB_BREAKAGES))
def test_rayjob_checks_catch_a_broken_copy(breakage):
    docs = copy.deepcopy(load_manifests())
    RAYJOB_BREAKAGES[breakage](docs)
    assert rayjob_problems(docs) != []


def test_every_kubernetes_object_is_well_formed():
    docs = load_manifests()
    kinds = [d.get("kind") for d in docs]
    assert kinds.count("RayJob") == 1
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and (d.get("metadata") or {}).get("name"), d
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    # The MLflow Service selects the MLflow pods.
    svc = by_kind[("Service", "mlflow")]
    deploy = by_kind[("Deployment", "mlflow")]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"  # not exposed outside the cluster
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert all(pod_labels.get(k) == v for k, v in deploy["spec"]["selector"]["matchLabels"].items())
    # Every pod runs as the service account defined here (credentials through the platform).
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    job = by_kind[("RayJob", load_rayjob(docs)["metadata"]["name"])]["spec"]["rayClusterSpec"]
    templates = [deploy["spec"]["template"], job["headGroupSpec"]["template"]] + [
        g["template"] for g in job["workerGroupSpecs"]]
    for t in templates:
        assert t["spec"].get("serviceAccountName") in accounts
    # MLflow accepts the Host header the driver sends (http://mlflow:5000).
    args = " ".join(deploy["spec"]["template"]["spec"]["containers"][0].get("args", []))
    assert "--allowed-hosts" in args and "mlflow:5000" in args


# --------------------------------------------------------------------------------------------
# docs/cluster.md and credentials


def docs_commands() -> list[str]:
    text = DOCS.read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    lines = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [ln.strip() for ln in joined.splitlines() if "run_ablation.py" in ln and not ln.strip().startswith("#")]
    return lines


def test_docs_study_commands_match_the_cli():
    commands = docs_commands()
    assert len(commands) >= 4, "docs/cluster.md should show the submit and --resume commands per platform"
    problems = []
    for cmd in commands:
        args = run_ablation_args(cmd)
        assert args is not None, cmd
        cluster = "--address" in args or any(a.startswith("--address=") for a in args)
        problems += cli_problems(args, cmd, cluster=cluster)
    assert problems == []
    assert any("--resume" in c for c in commands), "docs/cluster.md shows no --resume command"


def test_documented_kuberay_resume_edit_gives_a_valid_resuming_job():
    """docs/cluster.md resumes on KubeRay by piping the manifest through a sed substitution."""
    match = re.search(r"sed 's\|([^|]+)\|([^|]+)\|' cluster/kuberay-rayjob\.yaml", DOCS.read_text())
    assert match, "docs/cluster.md no longer shows the KubeRay --resume edit"
    edited = RAYJOB_FILE.read_text().replace(match.group(1), match.group(2))
    docs = [d for d in yaml.safe_load_all(edited) if d]
    assert rayjob_problems(docs) == []
    assert "--resume" in run_ablation_args(load_rayjob(docs)["spec"]["entrypoint"])


def test_docs_refer_to_files_that_exist():
    text = DOCS.read_text()
    for rel in set(re.findall(r"\b((?:cluster|ablations|docs)/[\w./-]+\.(?:ya?ml|md))\b", text)):
        assert (ROOT / rel).exists(), f"docs/cluster.md mentions {rel}, which does not exist"


SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key setting": r"(?i)aws_secret_access_key\s*[:=]",
    "private key block": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "GCP key file content": r'"private_key"\s*:',
    "SSH private key in the launcher config": r"(?m)^\s*ssh_private_key\s*:",
    "credentials file for Google clients": r"GOOGLE_APPLICATION_CREDENTIALS\s*[:=]",
}


@pytest.mark.parametrize("path", [*LAUNCHER.values(), RAYJOB_FILE, DOCS], ids=lambda p: p.name)
def test_no_credentials_in_the_files(path):
    text = path.read_text()
    found = [name for name, pattern in SECRET_PATTERNS.items() if re.search(pattern, text)]
    assert found == []
