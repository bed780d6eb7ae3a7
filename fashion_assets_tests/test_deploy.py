"""The deployment files, checked without Docker, a cluster, Helm or the network.

- Helm: helm/values.yaml (+ values-gpu.yaml) merged over the chart's defaults the way Helm merges
  them, validated against the chart's published schema and the user-deployments subchart's; the
  schemas' remote Kubernetes $refs resolve to the definitions kubernetes-validate ships.
- Kubernetes Jobs: the Jobs that K8sRunLauncher and k8s_job_executor would create, built by
  dagster-k8s's own code from what the chart renders of our values and from the step tags of the
  code location (loaded in a subprocess with the deployment's environment), then validated by
  kubernetes-validate, strict.
- Docker: Dockerfiles, .dockerignore and compose.yaml parsed and cross-checked.
- PostgreSQL: dagster.yaml's storage, used by `dagster asset materialize` against the session's
  real server.

Why this module is long: its parts check the deployment files against each other (the Jobs are
built from what the chart renders of the values, the Dockerfiles are checked against the values'
commands), through the module-scoped chart and code-location fixtures defined here once; split
into files, each would import the others' fixtures and helpers.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster_k8s.utils import sanitize_k8s_label
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .catalog_files import make_dataset

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The chart's published schema and default values, stored beside the checkout (SOURCE.md there).
CHART_DIR = Path(os.environ.get("FASHION_HELM_CHART_DIR") or ROOT.parent / "shared" / "reference" / "dagster-helm")
CODE_LOCATION = "fashion_assets.definitions"
# Step keys in the execution plan; ``[?]`` is a step mapped over shards, one pod per shard.
GPU_ASSETS = ("predictions.predict_shard_images[?]", "fashion_classifier")
CPU_ASSETS = ("image_set.copy_image_shard[?]", "products", "predictions.write_predictions")
VALUES = {"base": ["values.yaml"], "gpu": ["values.yaml", "values-gpu.yaml"]}
# Kubernetes releases the manifests must be valid for: an older one still common on managed
# clusters, and the newest kubernetes-validate ships.
K8S_VERSIONS = ("1.33.0", kubernetes_validate.utils.latest_version())
RELEASE = NAMESPACE = "dagster"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)
# The run queue's only tag limit, the same in dagster.yaml, docker/dagster.compose.yaml and the Helm
# values: one run at a time per partition key (query name) of image_set, augmented_set, predictions.
PARTITION_RUN_LIMITS = [{"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def constraint(name: str) -> str:
    """The version constraints.txt pins for a distribution."""
    norm = re.sub(r"[-_.]+", "-", name).lower()
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        dist, _, version = line.strip().partition("==")
        if re.sub(r"[-_.]+", "-", dist).lower() == norm:
            return version
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def package_version() -> str:
    return re.search(r"""version\s*=\s*["']([^"']+)""", (ROOT / "setup.py").read_text()).group(1)


# --------------------------------------------------------------------------------------------
# Helm: values merged like Helm, validated against the chart's schemas
# --------------------------------------------------------------------------------------------


def helm_merge(base, override):
    """Helm's coalescing of a values file over the values before it: maps merge key by key,
    lists and scalars replace, and null deletes the key."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def k8s_definitions(strict: bool) -> dict:
    folder = f"v{K8S_VERSIONS[0]}-local" + ("-strict" if strict else "")
    path = resources.files("kubernetes_validate") / "kubernetes-json-schema" / folder / "_definitions.json"
    return json.loads(path.read_text())


def k8s_registry() -> Registry:
    """The chart schemas refer to Kubernetes definitions by URL (yannh/kubernetes-json-schema
    v1.19.0 for the chart, kubernetesjsonschema.dev v1.18.0 for the subchart). Offline, any
    `.../_definitions.json` resolves to kubernetes-validate's copy (non-strict, as those are),
    which keeps the same names under `$defs`; `definitions` is added as an alias."""
    contents = k8s_definitions(strict=False)
    contents.pop("$id")  # resolve its internal #/$defs/... refs against the URL it was asked for
    contents["definitions"] = contents["$defs"]
    definitions = Resource.from_contents(contents, default_specification=DRAFT202012)

    def retrieve(uri: str) -> Resource:
        if uri.endswith("/_definitions.json"):
            return definitions
        raise LookupError(f"no offline copy of {uri}")

    return Registry(retrieve=retrieve)


class Chart:
    def __init__(self, folder: Path):
        self.defaults = load_yaml(folder / "values.yaml")
        self.sub_defaults = load_yaml(folder / "charts" / "dagster-user-deployments" / "values.yaml")
        registry = k8s_registry()
        schema = json.loads((folder / "values.schema.json").read_text())
        sub_schema = json.loads((folder / "charts" / "dagster-user-deployments" / "values.schema.json").read_text())
        self.validator = jsonschema.validators.validator_for(schema)(schema, registry=registry)
        self.sub_validator = jsonschema.validators.validator_for(sub_schema)(sub_schema, registry=registry)

    def values(self, *overrides: dict) -> dict:
        merged = self.defaults
        for override in overrides:
            merged = helm_merge(merged, override)
        return merged

    def subchart_values(self, values: dict) -> dict:
        """What the dagster-user-deployments subchart receives: its defaults, the parent's
        section for it, and the parent's `global`."""
        sub = helm_merge(self.sub_defaults, values.get("dagster-user-deployments", {}))
        sub["global"] = helm_merge(self.sub_defaults.get("global", {}), values.get("global", {}))
        return sub

    def errors(self, values: dict) -> list[str]:
        found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in self.validator.iter_errors(values)]
        if values.get("dagster-user-deployments", {}).get("enableSubchart"):
            sub = self.subchart_values(values)
            found += [f"dagster-user-deployments.{'.'.join(map(str, e.absolute_path))}: {e.message}"
                      for e in self.sub_validator.iter_errors(sub)]
        return found


@pytest.fixture(scope="module")
def chart() -> Chart:
    if not (CHART_DIR / "values.schema.json").is_file():
        pytest.skip(f"the dagster chart's reference files are not here ({CHART_DIR}); see FASHION_HELM_CHART_DIR")
    return Chart(CHART_DIR)


def our_values(name: str) -> list[dict]:
    return [load_yaml(ROOT / "helm" / f) for f in VALUES[name]]


def the_deployment(values: dict) -> dict:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert len(deployments) == 1, "one user deployment: fashion-assets"
    return deployments[0]


def env_of(deployment: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in deployment.get("env") or []}


@pytest.mark.parametrize("variant", VALUES)
def test_values_pass_the_chart_schema(chart, variant):
    values = chart.values(*our_values(variant))
    assert chart.errors(values) == []
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert env_of(the_deployment(values))["FASHION_EXECUTOR"] == "k8s"


@pytest.mark.parametrize(
    "override, complaint",
    [
        ({"runLauncher": {"type": "Nope"}}, "'Nope' is not one of"),
        # a Kubernetes object inside the values: proves the remote $refs are resolved, not ignored
        ({"dagsterWebserver": {"podSecurityContext": {"runAsUser": "root"}}}, "'root' is not of type"),
        ({"dagsterWebserver": {"tolerations": "nvidia.com/gpu"}}, "is not of type 'array'"),
        # checked by the subchart's own schema
        ({"dagster-user-deployments": {"deployments": [{"name": "x", "port": 3030}]}},
         "'image' is a required property"),
    ],
    ids=["run-launcher-type", "k8s-security-context", "k8s-tolerations", "subchart-deployment"],
)
def test_the_schema_check_fails_on_what_the_chart_forbids(chart, override, complaint):
    values = chart.values(*our_values("base"), override)
    errors = chart.errors(values)
    assert any(complaint in e for e in errors), errors


def test_the_ingress_example_in_the_values_is_valid(chart):
    text = (ROOT / "helm" / "values.yaml").read_text()
    block = re.search(r"^# >>> ingress-example.*?\n(.*?)^# <<< ingress-example", text, re.S | re.M).group(1)
    example = yaml.safe_load("\n".join(line.removeprefix("# ").removeprefix("#") for line in block.splitlines()))
    values = chart.values(*our_values("base"), example)
    assert chart.errors(values) == []
    assert values["ingress"]["enabled"] and "auth-url" in " ".join(values["ingress"]["annotations"])
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP"


def strict_k8s_validator(definition: str) -> jsonschema.Validator:
    defs = k8s_definitions(strict=True)
    schema = {"$ref": f"#/$defs/{definition}", "$defs": defs["$defs"]}
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("variant", VALUES)
def test_kubernetes_objects_in_the_values_are_valid_strictly(chart, variant):
    """The chart schema checks Kubernetes objects non-strictly (as Helm does): a misspelt field
    such as `runAsNonroot` would pass. Here each one we set is checked strictly."""
    values = chart.values(*our_values(variant))
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    objects = [
        (values["dagsterWebserver"]["podSecurityContext"], "io.k8s.api.core.v1.PodSecurityContext"),
        (values["dagsterDaemon"]["podSecurityContext"], "io.k8s.api.core.v1.PodSecurityContext"),
        (values["dagsterWebserver"]["securityContext"], "io.k8s.api.core.v1.SecurityContext"),
        (values["dagsterDaemon"]["securityContext"], "io.k8s.api.core.v1.SecurityContext"),
        (k8s["securityContext"], "io.k8s.api.core.v1.SecurityContext"),
        (k8s["runK8sConfig"]["podSpecConfig"]["securityContext"], "io.k8s.api.core.v1.PodSecurityContext"),
        (k8s["runK8sConfig"]["jobSpecConfig"] | {"template": {}}, "io.k8s.api.batch.v1.JobSpec"),
        (k8s["runK8sConfig"]["podTemplateSpecMetadata"], "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
    ]
    for deployment in values["dagster-user-deployments"]["deployments"]:
        objects += [
            (deployment["podSecurityContext"], "io.k8s.api.core.v1.PodSecurityContext"),
            (deployment["securityContext"], "io.k8s.api.core.v1.SecurityContext"),
            (deployment["resources"], "io.k8s.api.core.v1.ResourceRequirements"),
        ]
        objects += [(v, "io.k8s.api.core.v1.Volume") for v in deployment["volumes"]]
        objects += [(m, "io.k8s.api.core.v1.VolumeMount") for m in deployment["volumeMounts"]]
        objects += [(e, "io.k8s.api.core.v1.EnvVar") for e in deployment["env"]]
        objects += [(s, "io.k8s.api.core.v1.SecretEnvSource") for s in deployment["envSecrets"]]
    for part in ("dagsterWebserver", "dagsterDaemon"):
        objects += [(v, "io.k8s.api.core.v1.Volume") for v in values[part]["volumes"]]
        objects += [(m, "io.k8s.api.core.v1.VolumeMount") for m in values[part]["volumeMounts"]]
    for obj, definition in objects:
        errors = [e.message for e in strict_k8s_validator(definition).iter_errors(obj)]
        assert errors == [], (definition, obj, errors)
    typo = {"runAsNonroot": True}
    assert list(strict_k8s_validator("io.k8s.api.core.v1.PodSecurityContext").iter_errors(typo))


@pytest.mark.parametrize("variant", VALUES)
def test_values_security(chart, variant):
    values = chart.values(*our_values(variant))
    webserver = values["dagsterWebserver"]
    # No login of its own: in-cluster only, unless the (authenticating) ingress is enabled.
    assert webserver["service"]["type"] == "ClusterIP" and values["ingress"]["enabled"] is False
    assert isinstance(webserver["enableReadOnly"], bool)
    # A non-root process cannot bind a port below 1024; the probe must ask the port it serves.
    assert webserver["service"]["port"] >= 1024
    assert webserver["readinessProbe"]["httpGet"]["port"] == webserver["service"]["port"]

    run_launcher_config = values["runLauncher"]["config"]["k8sRunLauncher"]
    pod_contexts = [webserver["podSecurityContext"], values["dagsterDaemon"]["podSecurityContext"],
                    run_launcher_config["runK8sConfig"]["podSpecConfig"]["securityContext"]]
    pod_contexts += [d["podSecurityContext"] for d in values["dagster-user-deployments"]["deployments"]]
    for context in pod_contexts:
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
    containers = [webserver["securityContext"], values["dagsterDaemon"]["securityContext"],
                  run_launcher_config["securityContext"]]
    containers += [d["securityContext"] for d in values["dagster-user-deployments"]["deployments"]]
    for context in containers:
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]

    # Credentials only from Secrets: none of the chart's default "test" credentials survive, and no
    # environment variable anywhere in the values carries a literal secret or database URL.
    postgres = values["postgresql"]
    assert postgres["postgresqlPassword"] == ""
    assert "test" not in (postgres["postgresqlUsername"], postgres["postgresqlDatabase"])
    assert postgres["postgresqlScheme"] == "postgresql+psycopg2"
    for env in _all_env_vars(values):
        if "value" in env:
            assert not SECRET_NAME.search(env["name"]) and not env["name"].endswith("_URL"), env
    deployment = the_deployment(values)
    assert deployment["envSecrets"] == [{"name": "fashion-assets-env"}]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True  # the Secret reaches run and step pods


def _all_env_vars(node):
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            yield from node["env"]
        for value in node.values():
            yield from _all_env_vars(value)
    elif isinstance(node, list):
        for value in node:
            yield from _all_env_vars(value)


def test_values_agree_with_dagster_yaml_constraints_and_setup(chart):
    values = chart.values(*our_values("base"))
    instance = load_yaml(ROOT / "dagster.yaml")
    # The chart renders its own instance: same limits, retries and retention as dagster.yaml.
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    assert concurrency["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    assert concurrency["pools"]["granularity"] == instance["concurrency"]["pools"]["granularity"]
    assert concurrency["runs"]["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert concurrency["runs"]["tagConcurrencyLimits"] == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["maxConcurrentRuns"] is None and not queued["tagConcurrencyLimits"]  # the chart refuses both places
    retries = values["dagsterDaemon"]["runRetries"]
    assert (retries["enabled"], retries["maxRetries"], retries["retryOnAssetOrOpFailure"]) == (
        instance["run_retries"]["enabled"], instance["run_retries"]["max_retries"],
        instance["run_retries"]["retry_on_asset_or_op_failure"])
    assert values["retention"]["enabled"] is True
    assert values["retention"]["sensor"]["purgeAfterDays"] == instance["retention"]["sensor"]["purge_after_days"]
    assert values["retention"]["schedule"]["purgeAfterDays"] == instance["retention"]["schedule"]["purge_after_days"]
    assert values["postgresql"]["postgresqlScheme"] == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    # The GPU assets' pool has no limit of its own: the default limit is what caps it.
    from fashion_assets.core.placement import GPU_POOL

    assert GPU_POOL == "gpu" and concurrency["pools"]["defaultLimit"] >= 1
    # The run queue's tag limit is one run per partition (the GPU steps are capped by the pool).
    assert concurrency["runs"]["tagConcurrencyLimits"] == PARTITION_RUN_LIMITS
    # Webserver and daemon run the Dagster the user code pins; our images carry the package version.
    dagster = constraint("dagster")
    assert values["dagsterWebserver"]["image"]["tag"] == dagster == values["dagsterDaemon"]["image"]["tag"]
    for variant in VALUES:
        image = the_deployment(chart.values(*our_values(variant)))["image"]
        assert image["tag"] == package_version(), image


def test_gpu_overlay_changes_only_the_image_and_the_gpu_settings(chart):
    base = the_deployment(chart.values(*our_values("base")))
    gpu = the_deployment(chart.values(*our_values("gpu")))
    assert gpu["image"]["repository"] != base["image"]["repository"] and gpu["image"]["repository"].endswith("-gpu")
    base_env, gpu_env = env_of(base), env_of(gpu)
    assert base_env.keys() == gpu_env.keys()
    assert {k for k in base_env if base_env[k] != gpu_env[k]} <= {k for k in base_env if k.startswith("FASHION_GPU_")}
    assert gpu_env["FASHION_GPU_NODE_SELECTOR"] and not base_env["FASHION_GPU_NODE_SELECTOR"]
    # Helm replaced the whole list entry: everything else must have been repeated.
    strip = lambda d: {k: v for k, v in d.items() if k not in ("image", "env")}  # noqa: E731
    assert strip(gpu) == strip(base)


def test_helm_readme_has_the_commands_and_the_secrets(chart):
    readme = (ROOT / "helm" / "README.md").read_text()
    lines = [" ".join(line.split()) for line in re.sub(r"\\\n", " ", readme).splitlines()]  # continuations joined
    values = chart.values(*our_values("base"))
    assert "helm repo add dagster https://dagster-io.github.io/helm" in lines
    commands = [line for line in lines if line.startswith("helm upgrade --install ")]
    assert commands and all(f"--version {constraint('dagster')}" in c and "-f helm/values.yaml" in c for c in commands)
    assert any("-f helm/values-gpu.yaml" in c for c in commands)
    assert all("postgresql.postgresqlHost=" in c for c in commands)
    pg_secret = values["global"]["postgresqlSecretName"]
    assert any(f"create secret generic {pg_secret} --from-literal=postgresql-password=" in line for line in lines)
    env_secret = the_deployment(values)["envSecrets"][0]["name"]
    assert f"create secret generic {env_secret}" in readme
    for variable in ("FASHION_CATALOG_URL", "FASHION_QUERY_URL", "FASHION_STORE_URL", "FASHION_S3_ENDPOINT_URL",
                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        assert re.search(rf"^{variable}=", readme, re.M), variable
    # The optional reader comes from the same Secret as the writer's URL (helm/README.md, section 2).
    from fashion_assets.resources import CATALOG_URL_ENV, QUERY_URL_ENV

    values_text = (ROOT / "helm" / "values.yaml").read_text()
    assert CATALOG_URL_ENV in values_text and f"Optional, in the same Secret: {QUERY_URL_ENV}" in values_text
    assert "GRANT SELECT ON products, product_images, predictions TO fashion_reader;" in readme
    assert "enableReadOnly" in readme and "oauth2-proxy" in readme and "port-forward" in readme


# --------------------------------------------------------------------------------------------
# Kubernetes Jobs, as dagster-k8s builds them, validated by kubernetes-validate
# --------------------------------------------------------------------------------------------

_LOAD_CODE_LOCATION = """
import importlib, json, sys
from dagster._core.execution.api import create_execution_plan
defs = importlib.import_module(sys.argv[1]).defs
plan = create_execution_plan(defs.resolve_implicit_global_asset_job_def())
steps = {s.key: {"tags": dict(s.tags or {}), "pool": s.pool} for s in plan.get_all_steps_in_topo_order()}
executor = defs.executor
print(json.dumps({"steps": steps, "executor": None if executor is None else
                  {"name": executor.name, "config": executor.apply_config_mapping({}).value["config"]}}))
"""


def load_code_location(module: str, env: dict[str, str]) -> subprocess.Popen:
    """The code location as a run pod loads it: in a fresh process with the deployment's env
    (the GPU tags and the executor are computed at load time)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FASHION_", "DAGSTER_"))}
    return subprocess.Popen([sys.executable, "-c", _LOAD_CODE_LOCATION, module], env=clean | env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def code_location(chart) -> dict[str, dict]:
    """Per values variant: step tags and pools of the code location, and its executor."""
    processes = {variant: load_code_location(CODE_LOCATION, env_of(the_deployment(chart.values(*our_values(variant)))))
                 for variant in VALUES}
    loaded = {}
    for variant, process in processes.items():
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err[-3000:]
        loaded[variant] = json.loads(out.strip().splitlines()[-1])
    return loaded


def step_of(code_location: dict, variant: str, asset: str) -> dict:
    steps = code_location[variant]["steps"]
    if asset not in steps:
        pytest.fail(f"asset {asset!r} is not in {CODE_LOCATION}.defs (steps: {sorted(steps)})")
    return steps[asset]


def run_launcher(values: dict, monkeypatch):
    """A K8sRunLauncher configured as the chart's instance ConfigMap configures it
    (helm/dagster/templates/helpers/instance/_run-launcher.tpl), without a cluster."""
    import dagster_k8s.launcher

    monkeypatch.setattr(dagster_k8s.launcher, "load_kubernetes_config", lambda **_: None)
    config = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
               "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
               "jobMetadata": "job_metadata"}
    return dagster_k8s.launcher.K8sRunLauncher(
        service_account_name=RELEASE,
        instance_config_map=f"{RELEASE}-instance",
        postgres_password_secret=values["global"]["postgresqlSecretName"],
        dagster_home=values["global"]["dagsterHome"],
        job_namespace=config.get("jobNamespace") or NAMESPACE,
        image_pull_policy=config["imagePullPolicy"],
        load_incluster_config=config["loadInclusterConfig"],
        env_config_maps=[c["name"] for c in config["envConfigMaps"]],
        env_secrets=[s["name"] for s in config["envSecrets"]],
        env_vars=config["envVars"],
        volume_mounts=config["volumeMounts"],
        volumes=config["volumes"],
        labels=config.get("labels"),
        resources=config.get("resources"),
        security_context=config.get("securityContext"),
        run_k8s_config={run_k8s[k]: v for k, v in (config.get("runK8sConfig") or {}).items() if v},
    )


def container_context(deployment: dict) -> dict:
    """What the user-deployments subchart passes to the code server as its container context
    (templates/helpers/_helpers.tpl, dagsterUserDeployments.k8sContainerContext); Dagster
    applies it to every run and step launched from that code location."""
    fullname = f"{RELEASE}-dagster-user-deployments"
    k8s = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{fullname}-{deployment['name']}-user-env"]
        + [c["name"] for c in deployment.get("envConfigMaps") or []],
        "namespace": NAMESPACE,
        "service_account_name": f"{fullname}-user-deployments",
    }
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in deployment["envSecrets"]]
    for key, field in (("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels"),
                       ("resources", "resources"), ("schedulerName", "scheduler_name")):
        if deployment.get(key):
            k8s[field] = deployment[key]
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    return {"k8s": k8s}


def a_run(values: dict):
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.storage.dagster_run import DagsterRun

    deployment = the_deployment(values)
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    origin = RepositoryPythonOrigin(
        executable_path="/usr/local/bin/python",
        code_pointer=ModuleCodePointer(CODE_LOCATION, "defs", working_directory="/opt/dagster/app"),
        container_image=image,
        container_context=container_context(deployment),
    )
    return DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()),
                      job_code_origin=JobPythonOrigin("__ASSET_JOB", origin))


def as_manifest(job) -> dict:
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def step_job_manifest(values: dict, loaded: dict, step_key: str, monkeypatch) -> dict:
    """The Job k8s_job_executor creates for one step (K8sStepHandler.launch_step): the executor
    built from the code location's own executor config, in a run launched by our K8sRunLauncher."""
    import dagster_k8s.executor
    from dagster_k8s.job import construct_dagster_k8s_job

    plan_key, step_key = step_key, step_key.replace("[?]", "[shard_00000]")  # as it runs: one pod per shard
    launcher = run_launcher(values, monkeypatch)
    executor = loaded["executor"]
    assert executor and executor["name"] == "k8s_job_executor", executor
    monkeypatch.setattr(dagster_k8s.executor.kubernetes.config, "load_incluster_config", lambda: None)
    init = SimpleNamespace(instance=SimpleNamespace(run_launcher=launcher), executor_config=executor["config"])
    handler = dagster_k8s.executor.k8s_job_executor.executor_creation_fn(init)._step_handler  # noqa: SLF001

    run = a_run(values)
    context = SimpleNamespace(
        dagster_run=run,
        instance=init.instance,
        step_tags={step_key: loaded["steps"][plan_key]["tags"]},
        get_step_context=lambda key: SimpleNamespace(step=SimpleNamespace(op_name=key)),
        execute_step_args=SimpleNamespace(step_keys_to_execute=[step_key], run_id=run.run_id, known_state=None),
    )
    k8s_context = handler._get_container_context(context)  # noqa: SLF001
    job_config = k8s_context.get_k8s_job_config(handler._executor_image, launcher)  # noqa: SLF001
    if not job_config.job_image:
        job_config = job_config.with_image(run.job_code_origin.repository_origin.container_image)
    name = handler._get_k8s_step_job_name(context)  # noqa: SLF001
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_step"],
        job_name=name,
        pod_name=name,
        component="step_worker",
        user_defined_k8s_config=k8s_context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/op": step_key, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": run.job_name},
                  {"name": "DAGSTER_RUN_STEP_KEY", "value": step_key}],
    )
    return as_manifest(job)


def run_job_manifest(values: dict, monkeypatch) -> dict:
    """The run worker's Job (K8sRunLauncher._launch_k8s_job_with_args)."""
    from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id

    launcher = run_launcher(values, monkeypatch)
    run = a_run(values)
    k8s_context = launcher.get_container_context_for_run(run)
    job_config = k8s_context.get_k8s_job_config(run.job_code_origin.repository_origin.container_image, launcher)
    name = get_job_name_from_run_id(run.run_id)
    job = construct_dagster_k8s_job(
        job_config=job_config, args=["dagster", "api", "execute_run"], job_name=name, pod_name=name,
        component="run_worker", user_defined_k8s_config=k8s_context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": run.job_name}],
    )
    return as_manifest(job)


def assert_valid_manifest(manifest: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)
    pod = manifest["spec"]["template"]["spec"]
    for container in pod["containers"]:
        resources_ = container.get("resources") or {}
        requests, limits = resources_.get("requests") or {}, resources_.get("limits") or {}
        for resource in requests.keys() & limits.keys():  # the API server rejects request > limit
            request, limit = (kubernetes.utils.parse_quantity(q[resource]) for q in (requests, limits))
            assert request <= limit, (resource, requests, limits)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert all(c["securityContext"]["allowPrivilegeEscalation"] is False for c in pod["containers"])


def assert_production_wiring(manifest: dict, values: dict) -> None:
    deployment = the_deployment(values)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    env = {e["name"]: e for e in container["env"]}
    assert env["FASHION_EXECUTOR"]["value"] == "k8s"
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": values["global"]["postgresqlSecretName"], "key": "postgresql-password"}
    assert {"secretRef": {"name": "fashion-assets-env"}} in container["envFrom"]
    assert any(m["mountPath"] == env["FASHION_DATASET_DIR"]["value"] for m in container["volumeMounts"])


@pytest.mark.parametrize("variant", VALUES)
@pytest.mark.parametrize("asset", GPU_ASSETS)
def test_a_gpu_step_job_requests_a_gpu(chart, code_location, variant, asset, monkeypatch):
    from fashion_assets.core.placement import GPU_POOL

    values = chart.values(*our_values(variant))
    step = step_of(code_location, variant, asset)
    assert step["pool"] == GPU_POOL
    manifest = step_job_manifest(values, code_location[variant], asset, monkeypatch)
    assert_valid_manifest(manifest)
    assert_production_wiring(manifest, values)

    pod = manifest["spec"]["template"]["spec"]
    resources_ = pod["containers"][0]["resources"]
    env = env_of(the_deployment(values))
    assert resources_["requests"]["nvidia.com/gpu"] == resources_["limits"]["nvidia.com/gpu"] == "1"
    assert resources_["requests"]["cpu"] == env["FASHION_GPU_CPU"]
    assert resources_["requests"]["memory"] == env["FASHION_GPU_MEMORY"]
    toleration = {"key": env["FASHION_GPU_TOLERATION_KEY"], "operator": "Exists", "effect": "NoSchedule"}
    assert toleration in pod["tolerations"]
    selector = env["FASHION_GPU_NODE_SELECTOR"]
    if selector:
        key, _, value = selector.partition("=")
        assert pod["nodeSelector"] == {key: value}
    else:
        assert not pod.get("nodeSelector")
    assert manifest["metadata"]["labels"]["dagster/op"] == sanitize_k8s_label(asset.replace("[?]", "[shard_00000]"))


@pytest.mark.parametrize("variant", VALUES)
@pytest.mark.parametrize("asset", CPU_ASSETS)
def test_a_cpu_step_job_requests_no_gpu(chart, code_location, variant, asset, monkeypatch):
    values = chart.values(*our_values(variant))
    step = step_of(code_location, variant, asset)
    assert step["pool"] is None and "dagster-k8s/config" not in step["tags"]
    manifest = step_job_manifest(values, code_location[variant], asset, monkeypatch)
    assert_valid_manifest(manifest)
    assert_production_wiring(manifest, values)

    pod = manifest["spec"]["template"]["spec"]
    resources_ = pod["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in json.dumps(resources_)
    assert resources_ == the_deployment(values)["resources"]  # the deployment's defaults
    assert not pod.get("tolerations") and not pod.get("nodeSelector")


@pytest.mark.parametrize("variant", VALUES)
def test_the_run_worker_job(chart, variant, monkeypatch):
    values = chart.values(*our_values(variant))
    manifest = run_job_manifest(values, monkeypatch)
    assert_valid_manifest(manifest)
    assert_production_wiring(manifest, values)
    pod = manifest["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(pod["containers"][0]["resources"])
    assert not pod.get("tolerations") and not pod.get("nodeSelector")
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 86400
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"


def test_the_executor_is_chosen_by_configuration(chart, code_location, monkeypatch):
    for variant in VALUES:
        executor = code_location[variant]["executor"]
        max_concurrent = int(env_of(the_deployment(chart.values(*our_values(variant))))["FASHION_K8S_MAX_CONCURRENT"])
        assert executor["name"] == "k8s_job_executor" and executor["config"]["max_concurrent"] == max_concurrent
    import dagster as dg

    from fashion_assets.core.placement import executor_from_env

    monkeypatch.delenv("FASHION_EXECUTOR", raising=False)
    # Locally: the run's steps in one process (a process per step only added start-up time on one
    # machine: bench/overhead.py); the process per step stays a choice.
    assert executor_from_env() is dg.in_process_executor
    monkeypatch.setenv("FASHION_EXECUTOR", "multiprocess")
    assert executor_from_env() is dg.multiprocess_executor
    monkeypatch.setenv("FASHION_EXECUTOR", "threads")
    with pytest.raises(ValueError, match="FASHION_EXECUTOR=threads: expected one of in_process, multiprocess, k8s"):
        executor_from_env()


@pytest.mark.parametrize(
    "breakage",
    ["gpu-as-list", "unknown-field", "request-above-limit"],
)
def test_the_job_checks_fail_on_a_broken_job(chart, code_location, breakage, monkeypatch):
    values = chart.values(*our_values("base"))
    step_of(code_location, "base", CPU_ASSETS[0])
    manifest = step_job_manifest(values, code_location["base"], CPU_ASSETS[0], monkeypatch)
    assert_valid_manifest(manifest)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    if breakage == "gpu-as-list":
        container["resources"]["requests"]["nvidia.com/gpu"] = ["1"]
    elif breakage == "unknown-field":
        container["gpus"] = 1
    else:
        container["resources"]["limits"]["memory"] = "512Mi"  # below the 1Gi request
    with pytest.raises((kubernetes_validate.ValidationError, AssertionError)):
        assert_valid_manifest(manifest)


# --------------------------------------------------------------------------------------------
# Docker: images and the compose stack, read, not built
# --------------------------------------------------------------------------------------------


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                instructions.append((word.upper(), rest.strip()))
            current = ""
    return instructions


def dockerignored(path: str) -> bool:
    import fnmatch

    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a folder hides what it holds
    for pattern in patterns:
        if pattern.startswith("**/"):  # at any depth
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile(name):
    instructions = dockerfile(ROOT / "docker" / name)
    by_kind = lambda kind: [args for k, args in instructions if k == kind]  # noqa: E731
    (base,) = by_kind("FROM")
    if name == "Dockerfile":
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    else:  # TensorFlow built for CUDA, the same release as tensorflow-cpu in constraints.txt
        assert base == f"tensorflow/tensorflow:{constraint('tensorflow-cpu')}-gpu"
        assert f"'{constraint('tensorflow-cpu')}'" in " ".join(by_kind("RUN"))  # verified in the build
    # Non-root, numeric, so that Kubernetes can verify runAsNonRoot.
    assert by_kind("USER")[-1] == "10001"
    assert re.search(r"useradd --uid 10001\b", " ".join(by_kind("RUN")))
    # Dagster gives run and step pods a full command ("dagster api ..."): no entrypoint may wrap it.
    assert all(args == "[]" for args in by_kind("ENTRYPOINT"))
    if name == "Dockerfile.gpu":
        assert by_kind("ENTRYPOINT") == ["[]"], "the CUDA base image's entrypoint must be reset"
    cmd = json.loads(by_kind("CMD")[-1])
    assert cmd[:3] == ["dagster", "code-server", "start"] and cmd[cmd.index("-m") + 1] == CODE_LOCATION
    # Copied files exist, and .dockerignore does not hide them.
    for args in by_kind("COPY"):
        *sources, _ = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists() and not dockerignored(source), source
    # Runtime dependencies only, pinned by constraints.txt; the package installed, not editable.
    installs = [f"{args.strip()} " for args in re.findall(r"pip install ([^&]*)", " ".join(by_kind("RUN")))]
    assert any(re.match(r"-c constraints(-gpu)?\.txt \. ", args) for args in installs), installs
    assert "--no-deps . " in installs
    assert not any("[dev]" in args or re.search(r"(^| )-e ", args) for args in installs), installs
    for pinned in re.findall(r"\b(dagster-[a-z]+)==([\w.]+)", " ".join(installs)):
        assert pinned[1] == constraint("dagster-k8s"), pinned  # the dagster-* libraries move together
    if name == "Dockerfile":
        assert any(" tensorflow-cpu " in f" {args}" for args in installs), installs
    else:  # the base image's tensorflow stays; none is installed over it
        assert not any("tensorflow" in args for args in installs), installs
        assert "grep -viE '^tensorflow([-_]cpu)?==' constraints.txt > constraints-gpu.txt" in " ".join(by_kind("RUN"))
    # Nothing secret baked in.
    for kind in ("ENV", "ARG", "LABEL"):
        for args in by_kind(kind):
            assert not SECRET_NAME.search(args), args


def test_dockerignore():
    for path in (".venv/bin/python", ".git/HEAD", "data/catalog.sqlite", "docker/.env", ".env",
                 "fashion_assets/__pycache__/x.pyc", "fashion_assets_tests/test_deploy.py"):
        assert dockerignored(path), path
    for path in ("setup.py", "constraints.txt", "fashion_assets/definitions.py", "docker/Dockerfile"):
        assert not dockerignored(path), path


def test_compose_stack():
    compose = load_yaml(ROOT / "docker" / "compose.yaml")
    here = ROOT / "docker"
    services = compose["services"]
    assert {"postgres", "minio", "user-code", "webserver", "daemon"} <= services.keys()
    # Built from our Dockerfile; every Dagster process runs that image.
    for name in ("init", "user-code", "webserver", "daemon"):
        build = services[name]["build"]
        assert (here / build["context"]).resolve() == ROOT and (ROOT / build["dockerfile"]).is_file()
        assert services[name]["image"] == services["user-code"]["environment"]["DAGSTER_CURRENT_IMAGE"]
    # Bind mounts point at files that exist; the instance file is dagster.compose.yaml.
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            if source.startswith("."):
                assert (here / source).exists(), source
    instance_home = services["daemon"]["environment"]["DAGSTER_HOME"]
    for name in ("user-code", "webserver", "daemon"):
        assert f"./dagster.compose.yaml:{instance_home}/dagster.yaml:ro" in services[name]["volumes"]
    # The code server serves the module the Dockerfile's CMD serves, on the port the workspace names.
    cmd = json.loads(dict(dockerfile(ROOT / "docker" / "Dockerfile"))["CMD"])
    assert services["user-code"]["command"] == cmd
    workspace = yaml.safe_load(compose["configs"]["workspace"]["content"])
    (server,) = [entry["grpc_server"] for entry in workspace["load_from"]]
    assert server["host"] == "user-code" and str(server["port"]) == cmd[cmd.index("-p") + 1]
    # Secrets come from the environment (docker/.env), never from the file itself.
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*|:-[a-z]+)?\}", str(value)), (name, key, value)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    # DockerRunLauncher: runs join the compose network, get the mounts and the variables they need.
    launcher = load_yaml(here / "dagster.compose.yaml")["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    assert launcher["config"]["network"] == compose["networks"]["default"]["name"]
    assert launcher["config"]["container_kwargs"]["volumes_from"] == [services["user-code"]["container_name"]]
    daemon_env = services["daemon"]["environment"]
    assert set(launcher["config"]["env_vars"]) <= daemon_env.keys()
    assert {"DAGSTER_PG_PASSWORD", "FASHION_CATALOG_URL", "FASHION_STORE_URL", "AWS_SECRET_ACCESS_KEY"} <= set(
        launcher["config"]["env_vars"])


def test_instance_files():
    """dagster.yaml and the compose instance pass Dagster's instance schema, and the compose one is
    dagster.yaml plus its run launcher."""
    from dagster._core.instance.config import dagster_instance_config

    for folder, name in ((ROOT, "dagster.yaml"), (ROOT / "docker", "dagster.compose.yaml")):
        config, _ = dagster_instance_config(str(folder), name)
        assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    instance = load_yaml(ROOT / "dagster.yaml")
    compose_instance = load_yaml(ROOT / "docker" / "dagster.compose.yaml")
    assert {k: v for k, v in compose_instance.items() if k != "run_launcher"} == instance
    for config in (instance, compose_instance):
        assert config["concurrency"]["runs"]["tag_concurrency_limits"] == PARTITION_RUN_LIMITS
    assert "run_launcher" not in instance  # Dagster's default locally; the chart sets K8sRunLauncher
    try:  # the launcher's own schema, where dagster-docker is installed (it is in the images)
        from dagster._config import process_config
        from dagster_docker import DockerRunLauncher
    except ImportError:
        pass
    else:
        checked = process_config(DockerRunLauncher.config_type(), compose_instance["run_launcher"]["config"])
        assert checked.success, checked.errors
    storage = instance["storage"]["postgres"]["postgres_db"]
    assert {k: v["env"] for k, v in storage.items() if isinstance(v, dict)} == {
        "hostname": "DAGSTER_PG_HOST", "port": "DAGSTER_PG_PORT", "username": "DAGSTER_PG_USER",
        "password": "DAGSTER_PG_PASSWORD", "db_name": "DAGSTER_PG_DB"}


def test_the_run_queue_holds_one_run_per_partition():
    """The run queue's tag limit, applied by Dagster's own counter (the one the QueuedRunCoordinator
    uses): a second run of a partition waits while the first is in progress; other partitions and
    unpartitioned runs go ahead."""
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._core.storage.tags import PARTITION_NAME_TAG
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    limits = load_yaml(ROOT / "dagster.yaml")["concurrency"]["runs"]["tag_concurrency_limits"]
    assert [limit["key"] for limit in limits] == [PARTITION_NAME_TAG]  # the tag Dagster puts on partitioned runs

    def run(job: str, partition: str | None = None) -> DagsterRun:
        return DagsterRun(job_name=job, tags={PARTITION_NAME_TAG: partition} if partition else {})

    counter = TagConcurrencyLimitsCounter(limits, [run("__ASSET_JOB", "red dresses")])
    assert counter.is_blocked(run("__ASSET_JOB", "red dresses"))  # e.g. predictions after image_set
    assert not counter.is_blocked(run("__ASSET_JOB", "blue shoes"))
    assert not counter.is_blocked(run("train_job"))
    counter.update_counters_with_launched_item(run("__ASSET_JOB", "blue shoes"))
    assert counter.is_blocked(run("__ASSET_JOB", "blue shoes"))


# --------------------------------------------------------------------------------------------
# dagster.yaml against the real PostgreSQL server
# --------------------------------------------------------------------------------------------


def test_dagster_yaml_records_runs_in_postgres(postgres, tmp_path, monkeypatch):
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    database = "dagster_" + uuid.uuid4().hex[:10]
    postgres.create_database(database)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    pg_env = {"DAGSTER_PG_HOST": postgres.host, "DAGSTER_PG_PORT": str(postgres.port), "DAGSTER_PG_USER": postgres.user,
              "DAGSTER_PG_PASSWORD": postgres.password, "DAGSTER_PG_DB": database}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASHION_", "DAGSTER_"))} | pg_env | {
        "DAGSTER_HOME": str(home),
        "FASHION_DATASET_DIR": str(make_dataset(tmp_path / "catalog")),
        "FASHION_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.sqlite'}",
        "FASHION_STORE_URL": str(tmp_path / "store"),
    }
    result = subprocess.run([BIN / "dagster", "asset", "materialize", "-m", CODE_LOCATION, "--select", "products"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert postgres.password not in result.stdout + result.stderr

    for key, value in pg_env.items():  # dagster.yaml reads them when the instance loads
        monkeypatch.setenv(key, value)
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(AssetKey("products"))
        assert event is not None and event.run_id == run.run_id
        # The limits the daemon applies come from this file.
        instance_config = load_yaml(ROOT / "dagster.yaml")["concurrency"]
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == instance_config["pools"]["default_limit"]
        assert concurrency.run_queue_config.max_concurrent_runs == instance_config["runs"]["max_concurrent_runs"]
        assert concurrency.run_queue_config.tag_concurrency_limits == PARTITION_RUN_LIMITS
    # Nothing fell back to SQLite in DAGSTER_HOME.
    assert not list(home.rglob("*.db"))
