"""The Kubernetes manifests: they render, validate offline, and follow the policy."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ["dev", "prod"]
KUBERNETES_VERSION = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def kubectl() -> str:
    binary = shutil.which("kubectl")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl (with kustomize) is not installed")
        pytest.skip("kubectl is not installed")
    return binary


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet"))


def containers(pod_spec: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    found = list(pod_spec.get("containers", []))
    return found + list(pod_spec.get("initContainers", [])) if init else found


def test_every_object_validates_against_the_schemas(objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in objects}
    assert {
        "Namespace",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "NetworkPolicy",
        "ServiceMonitor",
    } <= kinds
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_containers_have_resources_probes_non_root_and_pinned_images(
    objects: list[dict[str, Any]],
) -> None:
    for workload in workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        pod_non_root = pod.get("securityContext", {}).get("runAsNonRoot") is True
        for container in containers(pod):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where}: {kind}"
            context = container.get("securityContext", {})
            assert context.get("runAsNonRoot", pod_non_root) is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{where}: untagged image {image}"
            assert not image.endswith(":latest"), where
        for container in containers(pod, init=False):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert "readinessProbe" in container, where
            assert "livenessProbe" in container, where


def test_only_triton_requests_gpus(objects: list[dict[str, Any]]) -> None:
    requesting = set()
    for workload in workloads(objects):
        for container in containers(workload["spec"]["template"]["spec"]):
            for kind in ("requests", "limits"):
                if "nvidia.com/gpu" in container.get("resources", {}).get(kind, {}):
                    requesting.add(workload["metadata"]["name"])
    namespace = next(o for o in objects if o["kind"] == "Namespace")["metadata"]["name"]
    assert namespace == "efficientsam"
    dev = not any("nodeSelector" in w["spec"]["template"]["spec"] for w in workloads(objects))
    assert requesting == (set() if dev else {"triton"})


def test_every_esam_variable_is_a_gateway_setting(objects: list[dict[str, Any]]) -> None:
    fields = {f"ESAM_{name.upper()}" for name in Settings.model_fields}
    named: set[str] = set()
    for obj in objects:
        if obj["kind"] in ("ConfigMap", "Secret"):
            named |= {k for k in obj.get("data", {}) if k.startswith("ESAM_")}
        if obj["kind"] == "Deployment":
            for container in containers(obj["spec"]["template"]["spec"]):
                named |= {
                    e["name"] for e in container.get("env", []) if e["name"].startswith("ESAM_")
                }
    assert named, "no ESAM_ settings found"
    assert named <= fields, named - fields
    config = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("esam-gateway")
    )
    Settings(
        **{k.removeprefix("ESAM_").lower(): v for k, v in config["data"].items()}
    )  # valid values


def _ports(container: dict[str, Any]) -> set[int | str]:
    ports: set[int | str] = set()
    for port in container.get("ports", []):
        ports.add(port["containerPort"])
        if "name" in port:
            ports.add(port["name"])
    return ports


def test_probe_and_service_ports_exist(objects: list[dict[str, Any]]) -> None:
    by_app: dict[str, set[int | str]] = {}
    for workload in workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        app = workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        for container in containers(pod, init=False):
            served = _ports(container)
            by_app.setdefault(app, set()).update(served)
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name, {})
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    if handler in probe:
                        assert probe[handler]["port"] in served, (container["name"], probe_name)
    for service in (o for o in objects if o["kind"] == "Service"):
        app = service["spec"]["selector"]["app.kubernetes.io/name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in by_app[app], (service["metadata"]["name"], port)
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        app = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        service = next(
            s for s in objects if s["kind"] == "Service" and s["metadata"]["name"] == app
        )
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
            p["name"] for p in service["spec"]["ports"]
        }


def test_network_policies_keep_triton_and_redis_behind_the_gateway(
    objects: list[dict[str, Any]],
) -> None:
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    for name in ("triton-from-gateway", "redis-from-gateway"):
        for rule in policies[name]["spec"]["ingress"]:
            for source in rule["from"]:
                allowed = source.get("podSelector", {}).get("matchLabels", {})
                scraper = source.get("namespaceSelector", {}).get("matchLabels", {})
                assert allowed == {"app.kubernetes.io/name": "gateway"} or scraper, (name, source)


def test_autoscalers_use_meaningful_signals(objects: list[dict[str, Any]]) -> None:
    hpas = {o["metadata"]["name"]: o for o in objects if o["kind"] == "HorizontalPodAutoscaler"}
    triton_metrics = [
        m["pods"]["metric"]["name"]
        for m in hpas["triton"]["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    assert triton_metrics == ["triton_queue_time_per_request_us"]
    gateway_types = {m["type"] for m in hpas["gateway"]["spec"]["metrics"]}
    assert gateway_types == {"Resource", "Pods"}
    adapter = yaml.safe_load(
        (REPO / "k8s" / "monitoring" / "prometheus-adapter-rules.yaml").read_text()
    )
    exported = {rule["name"]["as"] for rule in adapter["rules"]}
    # Triton's wait is the encoder's queue alone, per request of the encoder: the ensemble
    # and the preprocessing model see every request too and would dilute it
    queue_rule = next(
        r for r in adapter["rules"] if r["name"]["as"] == "triton_queue_time_per_request_us"
    )
    selectors = re.findall(r"(nv_inference_\w+)\{([^}]*)\}", queue_rule["metricsQuery"])
    assert [name for name, _ in selectors] == [
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
    ]
    assert all('model=~"efficientsam_encoder.*"' in labels for _, labels in selectors)
    pod_metrics = {
        m["pods"]["metric"]["name"]
        for h in hpas.values()
        for m in h["spec"]["metrics"]
        if m["type"] == "Pods"
    }
    assert pod_metrics <= exported


def test_prod_runs_triton_on_a100s_with_several_replicas() -> None:
    objects = render("prod")
    triton = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "triton"
    )
    assert triton["spec"]["replicas"] >= 2
    assert "A100" in triton["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
    gateway = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "gateway"
    )
    assert gateway["spec"]["replicas"] >= 2
    assert any(o["kind"] == "PrometheusRule" for o in objects)
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ESAM_LOG_FORMAT"]["value"] == "json"
    # tracing only where the operator provides a collector: an optional ConfigMap key
    ref = env["OTEL_EXPORTER_OTLP_ENDPOINT"]["valueFrom"]["configMapKeyRef"]
    assert ref["optional"] is True


def test_dev_is_cpu_only_with_one_replica_each() -> None:
    objects = render("dev")
    for workload in workloads(objects):
        assert workload["spec"]["replicas"] == 1, workload["metadata"]["name"]
    triton = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "triton"
    )
    args = triton["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["triton-serve", "--model-config-name=cpu"]


def test_dashboard_covers_gateway_and_triton_metrics() -> None:
    dashboard = json.loads(
        (REPO / "k8s" / "monitoring" / "dashboards" / "efficientsam.json").read_text()
    )
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "esam_request_duration_seconds_count",
        "esam_request_duration_seconds_bucket",
        "esam_cache_lookups_total",
        "nv_inference_exec_count",
        "nv_inference_queue_duration_us",
        "esam_encoder_images_total",
        "esam_redis_up",
    ):
        assert metric in exprs, metric
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for word in ("rate", "latency", "hit ratio", "batch size", "queue", "error"):
        assert word in titles, word


def test_alert_rules_reference_real_metrics() -> None:
    from service.core.metrics import Metrics

    ours = {m.name for m in Metrics().registry.collect()}
    rules = yaml.safe_load((REPO / "k8s" / "monitoring" / "alerts.yaml").read_text())
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"]
            for metric in set(re.findall(r"\besam_[a-z_]+", rule["expr"])):
                base = metric.removesuffix("_bucket").removesuffix("_count").removesuffix("_total")
                assert base in ours or metric in ours, (rule["alert"], metric)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_gateways_reach_triton_through_a_headless_service(overlay: str) -> None:
    """gRPC pins a connection to one pod behind a ClusterIP; the gateway balances itself."""
    objects = render(overlay)
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    config = next(
        o for o in objects if o["kind"] == "ConfigMap" and "ESAM_TRITON_URL" in o.get("data", {})
    )
    for url in config["data"]["ESAM_TRITON_URL"].split(","):
        host, port = url.removeprefix("grpc://").rsplit(":", 1)
        service = services[host]
        assert service["spec"].get("clusterIP") == "None", host
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}
