#!/usr/bin/env python3
"""Offline checks of the compose files, the Kubernetes manifests and the nats-server configs.

Run by deploy/check from the repository root (`python3 deploy/check_manifests.py`):

- compose files: `docker compose config -q` when Docker's compose plugin is there; else parsed as
  YAML, each service with an image or a build;
- every AGENTOS_* variable an AgentOS container is given (compose and Kubernetes) is one
  docs/operations.md documents (its environment table lists every variable the binary reads);
- deploy/k8s: each file and the kustomization's output (`kubectl kustomize`, when kubectl is
  there) validated with kubernetes-validate --strict (schemas of Kubernetes 1.37), then the
  deployment's own rules: non-root pods, requests and a memory limit on every container,
  probes, the PodDisruptionBudgets, and the NATS StatefulSet's size equal to every component's
  AGENTOS_NATS_REPLICAS;
- every nats-server config (nats/*.conf*, deploy/compose/*.conf, the ConfigMap in deploy/k8s)
  through `nats-server -t`, with throwaway certificates in place of the TLS files, when
  nats-server and openssl are there.
Exits 1 on the first failing section, after printing every failure of it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = [ROOT / "compose.yaml", ROOT / "deploy" / "compose.cluster.yaml"]
K8S = ROOT / "deploy" / "k8s"
WORKLOADS = ("Deployment", "StatefulSet")


def fail(errors: list[str]) -> None:
    if errors:
        for e in errors:
            print(f"FAILED: {e}")
        sys.exit(1)
    print("  SUCCESS")


def is_agentos(image: str) -> bool:
    return image.split("/")[-1].split(":")[0] == "agentos"


# --- compose -------------------------------------------------------------------------------------


def compose_plugin() -> bool:
    if not shutil.which("docker"):
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return probe.returncode == 0


def check_compose() -> dict[str, set[str]]:
    """Checks the compose files; returns the AGENTOS_* variables each file sets in AgentOS
    containers."""
    print("-- compose files")
    errors: list[str] = []
    env: dict[str, set[str]] = {}
    docker = compose_plugin()
    if not docker:
        print("  docker compose not available: YAML parse and structure only")
    for path in COMPOSE_FILES:
        rel = path.relative_to(ROOT)
        if docker:
            r = subprocess.run(
                ["docker", "compose", "-f", str(path), "config", "-q"],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                errors.append(f"{rel}: docker compose config: {r.stderr.strip()}")
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            errors.append(f"{rel}: not YAML: {e}")
            continue
        services = doc.get("services") if isinstance(doc, dict) else None
        if not isinstance(services, dict) or not services:
            errors.append(f"{rel}: no services")
            continue
        names: set[str] = set()
        for name, svc in services.items():
            if not isinstance(svc, dict) or not ("image" in svc or "build" in svc):
                errors.append(f"{rel}: service {name} has neither image nor build")
                continue
            for dep in svc.get("depends_on") or []:
                if dep not in services:
                    errors.append(f"{rel}: service {name} depends on unknown {dep}")
            if not is_agentos(str(svc.get("image", ""))):
                continue
            e = svc.get("environment") or {}
            keys = e.keys() if isinstance(e, dict) else [x.split("=", 1)[0] for x in e]
            names.update(k for k in keys if k.startswith("AGENTOS_"))
        env[str(rel)] = names
        print(f"  {rel}: {len(services)} services")
    fail(errors)
    return env


# --- variables -----------------------------------------------------------------------------------


def check_variables(env: dict[str, set[str]]) -> None:
    print("-- AGENTOS_* variables are documented (docs/operations.md)")
    ops = (ROOT / "docs" / "operations.md").read_text()
    table = ops.split("### Environment variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(AGENTOS_[A-Z0-9_]+)`", table))
    errors = [
        f"{where}: {name} is not in docs/operations.md's environment table"
        for where, names in sorted(env.items())
        for name in sorted(names)
        if name not in documented
    ]
    print(f"  {sum(len(n) for n in env.values())} settings, {len(set().union(*env.values()))} distinct")
    fail(errors)


# --- kubernetes ----------------------------------------------------------------------------------


def k8s_documents() -> tuple[list[tuple[str, dict]], list[str]]:
    """Every manifest of deploy/k8s (the kustomization's output when kubectl can render it)."""
    errors: list[str] = []
    if shutil.which("kubectl"):
        r = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True)
        if r.returncode != 0:
            return [], [f"kubectl kustomize deploy/k8s: {r.stderr.strip()}"]
        print("  rendered with kubectl kustomize")
        docs = [("kustomize output", d) for d in yaml.safe_load_all(r.stdout) if d]
    else:
        print("  kubectl not available: the files as they are, without the kustomization")
        docs = []
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text()).get("resources", [])
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    for name in files:
        if name not in listed:
            errors.append(f"deploy/k8s/{name} is not in kustomization.yaml's resources")
    for name in listed:
        if not (K8S / name).is_file():
            errors.append(f"kustomization.yaml lists {name}, which does not exist")
    raw = [
        (f"deploy/k8s/{name}", d)
        for name in files
        for d in yaml.safe_load_all((K8S / name).read_text())
        if d
    ]
    # The rendered output first: the rules below read the first copy of each resource.
    return docs + raw, errors


def pod_env(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_k8s() -> dict[str, set[str]]:
    print("-- deploy/k8s: kubernetes-validate --strict, then the deployment's rules")
    try:
        import kubernetes_validate
    except ImportError:
        fail(["kubernetes-validate is not installed: pip install -r tests/requirements.txt"])
        return {}
    docs, errors = k8s_documents()
    version = kubernetes_validate.latest_version()
    for where, d in docs:
        ident = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{where}: {ident}: {path}: {e.message}")
        except Exception as e:  # an unknown kind or version is a failure too
            errors.append(f"{where}: {ident}: {e}")
    print(f"  {len(docs)} documents (the kustomize output and each file) against Kubernetes {version}")
    fail(errors)

    # The deployment's own rules, on one copy of each resource.
    by_ident = {}
    for where, d in docs:
        by_ident.setdefault(f"{d['kind']}/{d['metadata']['name']}", (where, d))
    env: dict[str, set[str]] = {}
    replicas_wanted: dict[str, str | None] = {}
    nats_nodes = None
    for ident, (where, d) in sorted(by_ident.items()):
        if d["kind"] not in WORKLOADS:
            continue
        pod = d["spec"]["template"]["spec"]
        sc = pod.get("securityContext", {})
        if not sc.get("runAsNonRoot") or not sc.get("runAsUser"):
            errors.append(f"{ident}: the pod must set runAsNonRoot and runAsUser")
        for c in pod.get("initContainers", []) + pod["containers"]:
            cid = f"{ident} container {c['name']}"
            res = c.get("resources", {})
            if not res.get("requests", {}).get("cpu") or not res.get("requests", {}).get("memory"):
                errors.append(f"{cid}: no cpu and memory requests")
            if not res.get("limits", {}).get("memory"):
                errors.append(f"{cid}: no memory limit")
            csc = c.get("securityContext", {})
            if csc.get("allowPrivilegeEscalation") is not False or csc.get("capabilities", {}).get("drop") != ["ALL"]:
                errors.append(f"{cid}: allowPrivilegeEscalation false and capabilities drop ALL")
        for c in pod["containers"]:
            cid = f"{ident} container {c['name']}"
            if "livenessProbe" not in c:
                errors.append(f"{cid}: no livenessProbe")
            if is_agentos(c.get("image", "")):
                e = pod_env(c)
                env.setdefault(where, set()).update(k for k in e if k.startswith("AGENTOS_"))
                replicas_wanted[cid] = e.get("AGENTOS_NATS_REPLICAS")
                if c.get("args", [None])[0] == "edge":
                    probes = {
                        kind: c.get(kind, {}).get("httpGet", {}).get("path")
                        for kind in ("livenessProbe", "readinessProbe")
                    }
                    if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
                        errors.append(f"{cid}: liveness on /healthz and readiness on /readyz, got {probes}")
            elif c["name"] == "nats":
                nats_nodes = d["spec"].get("replicas")
                for kind in ("livenessProbe", "readinessProbe"):
                    path = c.get(kind, {}).get("httpGet", {}).get("path", "")
                    if not path.startswith("/healthz"):
                        errors.append(f"{cid}: {kind} is not on nats' /healthz")
    if nats_nodes != 3:
        errors.append(f"StatefulSet/nats: replicas {nats_nodes}, want 3")
    for cid, r in sorted(replicas_wanted.items()):
        if r != str(nats_nodes):
            errors.append(f"{cid}: AGENTOS_NATS_REPLICAS {r!r}, the cluster has {nats_nodes} nodes")
    pdbs = {
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items()))
        for _, d in by_ident.values()
        if d["kind"] == "PodDisruptionBudget"
    }
    for ident in ("StatefulSet/nats", "Deployment/agentos-edge"):
        if ident not in by_ident:
            errors.append(f"{ident} is missing")
            continue
        labels = tuple(sorted(by_ident[ident][1]["spec"]["selector"]["matchLabels"].items()))
        if labels not in pdbs:
            errors.append(f"{ident}: no PodDisruptionBudget selects it")
    print(f"  {len(by_ident)} resources, {len(replicas_wanted)} AgentOS containers at R{nats_nodes}")
    fail(errors)
    return env


# --- nats-server configs -------------------------------------------------------------------------


def nats_server() -> str | None:
    for candidate in (
        os.environ.get("AGENTOS_NATS_SERVER"),
        str(ROOT / "tools" / "nats" / "bin" / "nats-server"),
        shutil.which("nats-server"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def check_nats_configs() -> None:
    print("-- nats-server -t on every config")
    binary, openssl = nats_server(), shutil.which("openssl")
    if not binary or not openssl:
        print("  skipped: needs nats-server (scripts/install-nats-server) and openssl")
        return
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        # One throwaway key and self-signed certificate stand for every TLS file.
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(t / "key.pem"), "-out", str(t / "cert.pem"),
             "-subj", "/CN=check", "-days", "1"],
            check=True, capture_output=True,
        )
        configs: list[tuple[str, dict[str, str]]] = []
        for p in sorted(glob.glob(str(ROOT / "nats" / "*.conf*")) + glob.glob(str(ROOT / "deploy" / "compose" / "*.conf"))):
            configs.append((str(Path(p).relative_to(ROOT)), {Path(p).name: Path(p).read_text()}))
        cm = yaml.safe_load((K8S / "nats-config.yaml").read_text())
        configs.append(("deploy/k8s/nats-config.yaml", dict(cm["data"])))
        # The compose cluster's config includes its accounts file.
        compose_dir = ROOT / "deploy" / "compose"
        for where, files in configs:
            d = Path(tempfile.mkdtemp(dir=t))
            siblings = {p.name: p.read_text() for p in compose_dir.glob("*.conf")} if where.startswith("deploy/compose") else {}
            for name, text in {**siblings, **files}.items():
                text = re.sub(r'"/[^"]*key[^"/]*\.(pem|key)"', '"@KEY@"', text)
                text = re.sub(r'"/[^"]*\.(pem|crt)"', f'"{t}/cert.pem"', text)
                text = text.replace("@KEY@", f"{t}/key.pem")
                text = re.sub(r'"/(var/lib/nats|data)[^"]*"', f'"{d}/store"', text)
                (d / name).write_text(text)
            main = next(iter(files))
            if main.startswith("tenants") or main == "accounts.conf":
                # An accounts file on its own: included from a minimal server config.
                (d / "main.conf").write_text(f'include "{main}"\n')
                main = "main.conf"
            env = {**os.environ, "NODE_NAME": "n1", "SERVER_NAME": "n1",
                   "AGENTOS_NATS_PASSWORD": "x", "ACME_NATS_PASSWORD": "y", "ROUTE_PASSWORD": "z"}
            r = subprocess.run([binary, "-t", "-c", str(d / main)], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                errors.append(f"{where}: {(r.stderr or r.stdout).strip()}")
            else:
                print(f"  {where}: valid")
    fail(errors)


def main() -> None:
    env = check_compose()
    env.update(check_k8s())
    check_variables(env)
    check_nats_configs()


if __name__ == "__main__":
    main()
