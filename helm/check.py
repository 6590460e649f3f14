"""Checks on the chart's rendered output, for scripts/helm-check.

  validate FILE --k8s-version V   every manifest against its schema: the
                                  Kubernetes ones with kubernetes-validate
                                  (strict: unknown fields are errors), the
                                  CRDs (ClusterSPIFFEID, ServiceMonitor) with
                                  the chart's own JSON schemas in crd-schemas/
  invariants FILE                 the hardening and reload rules the chart
                                  promises (see the chart's values.yaml)
  extract FILE DIR                the gateway config, the policy files and the
                                  JWKS, paths rewritten into DIR, for
                                  `spiffe-mcp-gateway check`
  dashboard JSON README           the dashboard's metric names exist (README
                                  "Metrics"); writes its queries as a
                                  Prometheus rules file for `promtool check rules`
"""

import argparse
import base64
import json
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CRD_SCHEMAS = {
    ("spire.spiffe.io/v1alpha1", "ClusterSPIFFEID"): HERE / "crd-schemas" / "clusterspiffeid.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "crd-schemas" / "servicemonitor.json",
}
CONFIG_DIR = "/etc/spiffe-mcp-gateway"


def fail(msg):
    print(f"helm-check: {msg}", file=sys.stderr)
    sys.exit(1)


def load_manifests(path):
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    if not docs:
        fail(f"{path}: no manifests rendered")
    return docs


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate(args):
    docs = load_manifests(args.file)
    builtin = crd = 0
    errors = []
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CRD_SCHEMAS:
            schema = json.loads(CRD_SCHEMAS[key].read_text())
            validator = jsonschema.Draft7Validator(schema)
            errs = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
            errors += [f"{name_of(doc)}: {'.'.join(map(str, e.path))}: {e.message}" for e in errs]
            crd += 1
            continue
        try:
            kubernetes_validate.validate(doc, args.k8s_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{name_of(doc)}: no schema for {key[0]} {key[1]} (add one to crd-schemas/)")
            continue
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            errors.append(f"{name_of(doc)}: {path}: {e.message}")
            continue
        builtin += 1
    if errors:
        fail(f"{args.file} (Kubernetes {args.k8s_version}):\n  " + "\n  ".join(errors))
    kinds = ", ".join(sorted({d["kind"] for d in docs}))
    print(f"{len(docs)} manifests valid for Kubernetes {args.k8s_version}: "
          f"{builtin} by kubernetes-validate, {crd} by the chart's CRD schemas ({kinds})")


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def gateway_config(docs):
    maps = [d for d in by_kind(docs, "ConfigMap") if "gateway.yaml" in d.get("data", {})]
    if len(maps) != 1:
        fail(f"expected one ConfigMap with gateway.yaml, found {len(maps)}")
    return maps[0], yaml.safe_load(maps[0]["data"]["gateway.yaml"])


def invariants(args):
    """The chart's promises, checked on what it renders."""
    docs = load_manifests(args.file)
    problems = []
    deploys = by_kind(docs, "Deployment")
    if len(deploys) != 1:
        fail(f"expected one Deployment, found {len(deploys)}")
    pod = deploys[0]["spec"]["template"]
    spec = pod["spec"]
    gw = next(c for c in spec["containers"] if c["name"] == "gateway")
    psc, csc = spec.get("securityContext", {}), gw.get("securityContext", {})

    def want(cond, what):
        if not cond:
            problems.append(what)

    want(psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot") is True, "runAsNonRoot")
    want(csc.get("runAsUser", psc.get("runAsUser", 0)) != 0, "a non-root uid")
    want(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    want(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
    want("ALL" in csc.get("capabilities", {}).get("drop", []), "capabilities drop ALL")
    want(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
    res = gw.get("resources", {})
    want(res.get("requests") and res.get("limits"), "resource requests and limits")
    want(spec.get("automountServiceAccountToken") is False, "automountServiceAccountToken: false")
    want(gw.get("args", [])[:3] == ["serve", "--config", f"{CONFIG_DIR}/gateway.yaml"], "args serve --config")
    env = {e["name"]: e.get("value") for e in gw.get("env", [])}
    want(env.get("SPIFFE_ENDPOINT_SOCKET", "").startswith("unix:///spiffe-workload-api/"),
         "SPIFFE_ENDPOINT_SOCKET under /spiffe-workload-api")
    want(gw["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness /readyz")
    want(gw["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness /healthz")

    mounts = {m["mountPath"]: m for m in gw.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    api = mounts.get("/spiffe-workload-api")
    want(api and api.get("readOnly") is True, "Workload API mounted read-only")
    if api:
        vol = volumes[api["name"]]
        want(vol.get("csi", {}).get("driver") == "csi.spiffe.io" and vol["csi"].get("readOnly") is True
             or vol.get("hostPath", {}).get("type") == "Directory", "Workload API from csi.spiffe.io or hostPath")
    _, config = gateway_config(docs)
    for key in ("dir", "shadow_dir", "pins_dir"):
        path = config["policy"].get(key)
        if path is None:
            continue
        m = mounts.get(path)
        # A subPath mount never sees ConfigMap updates: no reload.
        want(m is not None and "subPath" not in m and "configMap" in volumes[m["name"]],
             f"policy.{key} {path} mounted as a whole ConfigMap directory (no subPath)")

    keys_file = config.get("sessions", {}).get("keys_file")
    want(keys_file is not None, "sessions.keys_file set (every replica serves every session)")
    if keys_file:
        m = mounts.get(str(Path(keys_file).parent))
        # Whole directory: a subPath mount would never see a key rotation.
        want(m is not None and "subPath" not in m and m.get("readOnly") is True
             and "secret" in volumes[m["name"]],
             f"sessions.keys_file {keys_file} in a Secret mounted read-only as a directory (no subPath)")

    annotations = pod["metadata"].get("annotations", {})
    sums = [k for k in annotations if k.startswith("checksum/")]
    want(sums == ["checksum/config"], f"only checksum/config on the pod (found {sums})")

    drain = config.get("shutdown", {}).get("drain_timeout_seconds", 15)
    pre = gw.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    want(spec.get("terminationGracePeriodSeconds", 30) > drain + pre,
         "terminationGracePeriodSeconds above the drain timeout (+ preStop sleep)")
    want(config["listener"]["address"].startswith(("0.0.0.0:", "[::]:")), "listener on all addresses")
    want("socket" not in config.get("workload_api", {}), "workload_api.socket left to SPIFFE_ENDPOINT_SOCKET")

    ports = {p["name"]: p["containerPort"] for p in gw["ports"]}
    want(config["listener"]["address"].endswith(f":{ports['mcp']}"), "mcp port matches listener.address")
    want(config["admin"]["address"].endswith(f":{ports['admin']}"), "admin port matches admin.address")
    svc = by_kind(docs, "Service")
    want(len(svc) == 1 and {p["name"] for p in svc[0]["spec"]["ports"]} == {"mcp", "admin"},
         "a Service with the mcp and admin ports")
    ids = by_kind(docs, "ClusterSPIFFEID")
    labels = pod["metadata"].get("labels", {}).items()
    want(not ids or any(d["spec"]["podSelector"].get("matchLabels", {}).items() <= labels for d in ids),
         "a ClusterSPIFFEID selecting the gateway's pods")
    if problems:
        fail(f"{args.file}: the chart broke its promises:\n  " + "\n  ".join(problems))
    print(f"{len(docs)} manifests keep the chart's promises (hardened pod, Workload API, "
          f"policy directories without subPath, only the config checksummed)")


def write_dir(docs, name, out):
    maps = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == name]
    if len(maps) != 1:
        fail(f"ConfigMap {name} not rendered (an existingConfigMap cannot be checked here)")
    out.mkdir(parents=True)
    for file, content in maps[0].get("data", {}).items():
        (out / file).write_text(content)
    return len(maps[0].get("data", {}))


def extract(args):
    """Writes DIR/gateway.yaml (paths into DIR) and the directories it names."""
    docs = load_manifests(args.file)
    cm, config = gateway_config(docs)
    out = Path(args.dir)
    deploy = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    gw = next(c for c in deploy["containers"] if c["name"] == "gateway")
    mounts = {m["mountPath"]: m["name"] for m in gw["volumeMounts"]}
    volumes = {v["name"]: v for v in deploy["volumes"]}

    def relocate(path):
        if not path.startswith(CONFIG_DIR + "/"):
            fail(f"{path} is not under {CONFIG_DIR}")
        return str(out / path[len(CONFIG_DIR) + 1:])

    for key in ("dir", "shadow_dir", "pins_dir"):
        if key in config["policy"]:
            path = config["policy"][key]
            n = write_dir(docs, volumes[mounts[path]]["configMap"]["name"], Path(relocate(path)))
            print(f"policy.{key}: {n} files")
            config["policy"][key] = relocate(path)
    user = config.get("user_auth") or {}
    if "jwks_file" in user:
        jwks = json.loads(cm["data"]["jwks.json"])
        if not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
            fail("jwks.json has no keys")
        Path(relocate(user["jwks_file"])).write_text(cm["data"]["jwks.json"])
        user["jwks_file"] = relocate(user["jwks_file"])
    sessions = config.get("sessions") or {}
    if "keys_file" in sessions:
        path = sessions["keys_file"]
        secret = volumes[mounts[str(Path(path).parent)]]["secret"]["secretName"]
        found = [d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == secret]
        if len(found) != 1:
            fail(f"Secret {secret} not rendered (an existingSecret cannot be checked here)")
        keys = Path(relocate(path))
        keys.parent.mkdir(parents=True, exist_ok=True)
        keys.write_bytes(base64.b64decode(found[0]["data"]["keys"]))
        keys.chmod(0o600)
        print(f"sessions.keys_file: {len(keys.read_text().splitlines())} key(s) from Secret {secret}")
        sessions["keys_file"] = str(keys)
    (out / "gateway.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def dashboard(args):
    dash = json.loads(Path(args.json).read_text())
    readme = Path(args.readme).read_text()
    exprs = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                exprs.append((p["title"], t["expr"]))

    walk(dash["panels"])
    names = {re.sub(r"_bucket$", "", n) for _, e in exprs for n in re.findall(r"mcp_gateway_[a-z_]+", e)}
    unknown = sorted(n for n in names if f"`{n}" not in readme)
    if unknown:
        fail(f"{args.json}: metrics not in the README's list: {', '.join(unknown)}")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")
         .replace("$namespace", ".*").replace("$pod", ".*")} for i, (_, e) in enumerate(exprs)]}]}
    Path(args.rules).write_text(yaml.safe_dump(rules))
    print(f"dashboard: {len(dash['panels'])} panels, {len(exprs)} queries over {len(names)} metrics, all in the README")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    v = sub.add_parser("validate")
    v.add_argument("file")
    v.add_argument("--k8s-version", required=True)
    v.set_defaults(fn=validate)
    i = sub.add_parser("invariants")
    i.add_argument("file")
    i.set_defaults(fn=invariants)
    e = sub.add_parser("extract")
    e.add_argument("file")
    e.add_argument("dir")
    e.set_defaults(fn=extract)
    d = sub.add_parser("dashboard")
    d.add_argument("json")
    d.add_argument("readme")
    d.add_argument("rules")
    d.set_defaults(fn=dashboard)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
