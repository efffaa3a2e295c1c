#!/usr/bin/env python3
"""Checks for the tidegate Helm chart; scripts/check-chart.sh installs the tools and runs this.

For every values case (chart defaults, each helm/tidegate/ci/*.yaml, the example app chart that
includes the sidecar templates):
  lint      helm lint (helm-sdkpy, the real helm engine), strict: warnings fail too
  schema    the coalesced values against helm/tidegate/values.schema.json
  render    chart-render (helm-compatible offline renderer, strict missing-key mode)
  k8s       every manifest against the Kubernetes OpenAPI schemas (kubernetes-validate, strict)
  assert    rendered content: sidecar placement, probes, security context, config mount, grace
            period, secrets kept out of the ConfigMap, admin-token wiring, Service/HPA/PDB/...
Also the Dockerfile (parsed with BuildKit's parser via the `dockerfile` package): stages, base
images, the stub layer covering every target Cargo.toml declares, COPY sources present and not
.dockerignored, non-root USER, ports, and ENTRYPOINT/CMD equal to what the chart runs.
Then the negative cases (helm/test-values/invalid/*.yaml must fail where they say) and a
self-test that feeds broken manifests to the assertions and to kubernetes-validate.

Usage: checks.py --repo ROOT --renderer PATH [--keep DIR]
Prints one line per check and a closing "N passed, N failed" line; exits 1 on any failure.
"""

import argparse
import asyncio
import base64
import copy
import fnmatch
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import jsonschema
import kubernetes_validate
import tomllib
import yaml

CONFIG_DIR = "/etc/tidegate"
CONFIG_FILE = "/etc/tidegate/tidegate.yaml"
STATE_DIR = "/var/lib/tidegate"
LATEST_KUBE = "1.37"
NATIVE_SIDECAR_KUBE = "1.29"  # initContainers[].restartPolicy: Always, on by default
OLDEST_KUBE = "1.25"
CRD_KINDS = {"ServiceMonitor"}  # not in the Kubernetes schemas; shape checked by hand

# Kubernetes versions each values case is validated against (default: native-sidecar minimum
# and the newest schemas the installed kubernetes-validate ships).
KUBE_VERSIONS = {
    "sidecar-legacy.yaml": [OLDEST_KUBE, LATEST_KUBE],
    "deployment-full.yaml": ["1.30", LATEST_KUBE],  # preStop.sleep
    "deployment-defaults.yaml": [OLDEST_KUBE, NATIVE_SIDECAR_KUBE, LATEST_KUBE],
}
DEFAULT_KUBE_VERSIONS = [NATIVE_SIDECAR_KUBE, LATEST_KUBE]


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, name, problems):
        """Record a check; problems is a list of strings (empty: pass)."""
        if problems:
            self.failed.append(name)
            print(f"FAIL  {name}")
            for p in problems:
                for i, line in enumerate(str(p).splitlines()[:12]):
                    print(("      - " if i == 0 else "        ") + line)
        else:
            self.passed += 1
            print(f"ok    {name}")
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

class Rendered:
    def __init__(self, ok, docs, values, notes, error):
        self.ok, self.docs, self.values, self.notes, self.error = ok, docs, values, notes, error


def render(renderer, chart_dir, values_files, release, namespace, workdir, kube_version=None):
    values_out = os.path.join(workdir, "values.json")
    notes_out = os.path.join(workdir, "NOTES.txt")
    for p in (values_out, notes_out):
        if os.path.exists(p):
            os.remove(p)
    cmd = [renderer, "--release", release, "--namespace", namespace,
           "--values-out", values_out, "--notes-out", notes_out]
    if kube_version:
        cmd += ["--kube-version", kube_version]
    for f in values_files:
        cmd += ["-f", f]
    cmd.append(chart_dir)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    values = json.load(open(values_out)) if os.path.exists(values_out) else None
    if proc.returncode != 0:
        return Rendered(False, [], values, "", (proc.stderr or proc.stdout).strip())
    with open(os.path.join(workdir, "manifests.yaml"), "w") as fh:
        fh.write(proc.stdout)
    try:
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    except yaml.YAMLError as e:
        return Rendered(False, [], values, "", f"rendered output is not valid YAML: {e}")
    notes = open(notes_out).read() if os.path.exists(notes_out) else ""
    return Rendered(True, docs, values, notes, "")


_helm = None


def helm_lint(chart_dir, values, workdir):
    """helm lint with the real helm engine (helm-sdkpy). helm-sdkpy's lint takes no values
    files, so lint a copy of the chart whose values.yaml is the coalesced values (what
    `helm lint -f` lints). Strict: warnings fail too. Returns a list of problems."""
    global _helm
    if _helm is None:
        import helm_sdkpy
        _helm = (helm_sdkpy, helm_sdkpy.Configuration())
    helm_sdkpy, cfg = _helm
    target = chart_dir
    if values is not None:
        target = os.path.join(workdir, "lint", os.path.basename(chart_dir.rstrip("/")))
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(chart_dir, target)
        with open(os.path.join(target, "values.yaml"), "w") as fh:
            json.dump(values, fh, indent=2)
    # helm logs lint-mode notes (e.g. "funcMap fail") on fd 2 from Go: keep them in a file.
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.path.join(workdir, "helm-lint.log"), "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            res = asyncio.run(helm_sdkpy.Lint(cfg).run(target))
        except Exception as e:  # the library raises on a chart it cannot load
            return [f"helm lint: {e}"]
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    sev = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    problems = []
    for m in res.get("Messages") or []:
        if m.get("Severity", 0) >= 2:
            err = m.get("Err")
            detail = err if isinstance(err, str) and err else "(helm-sdkpy does not pass the message text)"
            problems.append(f"[{sev.get(m['Severity'])}] {m.get('Path')}: {detail}")
    return problems


def schema_errors(schema, values):
    v = jsonschema.Draft7Validator(schema)
    out = []
    for e in sorted(v.iter_errors(values), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        out.append(f"{path}: {e.message}")
    return out


def k8s_validate(docs, versions):
    problems = []
    for d in docs:
        if d.get("kind") in CRD_KINDS:
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{d.get('kind')}/{meta_name(d)} @ {v}: {str(e).splitlines()[0]} "
                                f"(at {'.'.join(str(p) for p in e.caught.absolute_path) if hasattr(e, 'caught') else '?'})")
            except Exception as e:
                problems.append(f"{d.get('kind')}/{meta_name(d)} @ {v}: {type(e).__name__}: {e}")
    return problems


# ---------------------------------------------------------------------------------------------
# Assertions on rendered content
# ---------------------------------------------------------------------------------------------

def meta_name(d):
    return (d.get("metadata") or {}).get("name")


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def duration_seconds(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(s))
    if not m:
        raise ValueError(f"bad duration {s!r}")
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": n * 60, "h": n * 3600}[unit]


def is_subset(small, big):
    return all(big.get(k) == v for k, v in (small or {}).items())


def gateway_pods(docs, values):
    """(workload, pod spec, container, where) for every pod that runs the gateway container."""
    name = values["containerName"]
    found = []
    for d in docs:
        if d.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        spec = d["spec"]["template"]["spec"]
        for where in ("initContainers", "containers"):
            for c in spec.get(where) or []:
                if c.get("name") == name and "serve" in (c.get("args") or []):
                    found.append((d, spec, c, where))
    return found


def secret_values(docs, values):
    """Every secret string the release knows: rendered Secret data and providerKeys.values."""
    out = set()
    for s in by_kind(docs, "Secret"):
        for v in (s.get("data") or {}).values():
            out.add(base64.b64decode(v).decode("utf-8", "replace"))
            out.add(v)
        for v in (s.get("stringData") or {}).values():
            out.add(str(v))
    for v in ((values.get("providerKeys") or {}).get("values") or {}).values():
        out.add(str(v))
    return {s for s in out if len(s) >= 8}


SECRETISH_KEY = re.compile(r"^(api_?key|apiKey|token|password|secret|key|authorization)$", re.I)
SECRETISH_TEXT = [re.compile(p) for p in (r"\bsk-[A-Za-z0-9_-]{8,}", r"(?i)\bbearer\s+\S", r"sk-ant-")]


def walk_keys(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}" if path else str(k), k, v
            yield from walk_keys(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_keys(v, f"{path}[{i}]")


def check_configmap(docs, values, cm_name):
    """The config ConfigMap: parses, has the chart-managed keys right, and holds no secret."""
    p = []
    cms = [d for d in by_kind(docs, "ConfigMap") if meta_name(d) == cm_name]
    if len(cms) != 1:
        return [f"expected one ConfigMap {cm_name}, found {len(cms)}"], None
    cm = cms[0]
    if cm.get("immutable"):
        p.append("ConfigMap is immutable: hot reload would never see a change")
    data = cm.get("data") or {}
    if set(data) != {"tidegate.yaml"}:
        p.append(f"ConfigMap keys {sorted(data)}: expected only tidegate.yaml")
    try:
        cfg = yaml.safe_load(data.get("tidegate.yaml", ""))
    except yaml.YAMLError as e:
        return p + [f"tidegate.yaml does not parse: {e}"], None
    if not isinstance(cfg, dict):
        return p + ["tidegate.yaml is not a map"], None
    srv = cfg.get("server") or {}
    admin = values["server"]["adminPort"]
    ahost = str(srv.get("admin_listen", "")).rsplit(":", 1)[0].strip("[]")
    if ahost != values["server"]["adminListenAddress"].strip("[]") or not str(srv.get("admin_listen")).endswith(f":{admin}"):
        p.append(f"server.admin_listen {srv.get('admin_listen')!r}: expected {values['server']['adminListenAddress']}:{admin}")
    if ahost.startswith("127.") or ahost in ("::1", "localhost"):
        p.append(f"server.admin_listen {srv.get('admin_listen')!r} is loopback: kubelet probes hit the pod IP")
    listen = str(srv.get("listen", ""))
    host = listen.rsplit(":", 1)[0]
    want_host = values["server"]["listenAddress"] or ("127.0.0.1" if values["mode"] == "sidecar" else "0.0.0.0")
    if host.strip("[]") != want_host.strip("[]") or not listen.endswith(f":{values['server']['port']}"):
        p.append(f"server.listen {listen!r}: expected {want_host}:{values['server']['port']}")
    if srv.get("shutdown_grace") != values["server"]["shutdownGrace"]:
        p.append(f"server.shutdown_grace {srv.get('shutdown_grace')!r} != values {values['server']['shutdownGrace']!r}")
    # shutdown_delay: the value, or by default 5s in deployment mode (endpoint removal races
    # SIGTERM) and 0s in sidecar mode.
    want_delay = values["server"].get("shutdownDelay") or ("5s" if values["mode"] == "deployment" else "0s")
    if srv.get("shutdown_delay") != want_delay:
        p.append(f"server.shutdown_delay {srv.get('shutdown_delay')!r}: expected {want_delay!r}")
    if "state" in cfg and (cfg["state"] or {}).get("dir") != STATE_DIR:
        p.append(f"state.dir {(cfg['state'] or {}).get('dir')!r}: expected {STATE_DIR}")
    for key in ("providers", "routes"):
        if not cfg.get(key):
            p.append(f"config has no {key}")
    # No secret material in the ConfigMap.
    text = json.dumps(cm)
    for s in secret_values(docs, values):
        if s in text:
            p.append(f"ConfigMap contains a secret value ({s[:4]}...)")
    for rx in SECRETISH_TEXT:
        if rx.search(text):
            p.append(f"ConfigMap matches secret-looking pattern {rx.pattern}")
    for path, k, v in walk_keys(cfg):
        if SECRETISH_KEY.match(str(k)) and not isinstance(v, (dict, list)):
            p.append(f"config key {path} looks like inline secret material")
    return p, cfg


def resolve_port(container, port):
    if isinstance(port, int):
        return port
    for cp in container.get("ports") or []:
        if cp.get("name") == port:
            return cp.get("containerPort")
    return None


def check_gateway(docs, values, workload, spec, c, where, cfg, expect_native):
    """Everything about one gateway container and its pod."""
    p = []
    wname = f"{workload['kind']}/{meta_name(workload)}"
    # Placement.
    if expect_native:
        if where != "initContainers":
            p.append(f"{wname}: native sidecar expected in initContainers, found in {where}")
        if c.get("restartPolicy") != "Always":
            p.append(f"{wname}: native sidecar needs restartPolicy: Always (got {c.get('restartPolicy')!r})")
    else:
        if where != "containers":
            p.append(f"{wname}: gateway expected in containers, found in {where}")
        if "restartPolicy" in c:
            p.append(f"{wname}: restartPolicy on a regular container")
    n_gw = sum(1 for w in ("initContainers", "containers") for x in spec.get(w) or [] if x.get("name") == c.get("name"))
    if n_gw != 1:
        p.append(f"{wname}: gateway container appears {n_gw} times")
    # Image.
    img = values["image"]
    want = f"{img['repository']}@{img['digest']}" if img["digest"] else f"{img['repository']}:{img['tag'] or values.get('_appVersion')}"
    if c.get("image") != want:
        p.append(f"{wname}: image {c.get('image')!r}, expected {want!r}")
    # Command line.
    args = c.get("args") or []
    if args[:1] != ["serve"] or "--config" not in args or args[args.index("--config") + 1] != CONFIG_FILE:
        p.append(f"{wname}: args {args} must be serve --config {CONFIG_FILE}")
    if "--state-dir" not in args or args[args.index("--state-dir") + 1] != STATE_DIR:
        p.append(f"{wname}: args {args} must pass --state-dir {STATE_DIR}")
    # Ports and probes.
    admin, data = values["server"]["adminPort"], values["server"]["port"]
    ports = {cp.get("containerPort") for cp in c.get("ports") or []}
    if not {admin, data} <= ports:
        p.append(f"{wname}: container ports {sorted(ports)} lack {data} and/or {admin}")
    want_probes = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    if values["probes"]["startup"]["enabled"]:
        want_probes["startupProbe"] = "/readyz"
    for probe, path in want_probes.items():
        pr = c.get(probe)
        if not pr or "httpGet" not in pr:
            p.append(f"{wname}: {probe} missing or not httpGet")
            continue
        if pr["httpGet"].get("path") != path:
            p.append(f"{wname}: {probe} path {pr['httpGet'].get('path')!r}, expected {path}")
        if resolve_port(c, pr["httpGet"].get("port")) != admin:
            p.append(f"{wname}: {probe} port {pr['httpGet'].get('port')!r} is not the admin port {admin}")
    # Resources.
    res = c.get("resources") or {}
    for k in ("requests", "limits"):
        if not res.get(k):
            p.append(f"{wname}: resources.{k} missing")
    # Security context (container, falling back to the pod's for the inheritable fields).
    sc, psc = c.get("securityContext") or {}, spec.get("securityContext") or {}
    eff = lambda k: sc.get(k, psc.get(k))
    if eff("runAsNonRoot") is not True:
        p.append(f"{wname}: runAsNonRoot is not true")
    uid = eff("runAsUser")
    if not isinstance(uid, int) or uid == 0:
        p.append(f"{wname}: runAsUser {uid!r}: expected a fixed non-root UID")
    if sc.get("readOnlyRootFilesystem") is not True:
        p.append(f"{wname}: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        p.append(f"{wname}: allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        p.append(f"{wname}: privileged")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        p.append(f"{wname}: capabilities.drop lacks ALL")
    if caps.get("add"):
        p.append(f"{wname}: capabilities.add {caps['add']}")
    if (eff("seccompProfile") or {}).get("type") != "RuntimeDefault":
        p.append(f"{wname}: seccompProfile is not RuntimeDefault")
    # Volumes: config as a directory (no subPath), writable emptyDir state, secrets as dirs.
    vols = {v["name"]: v for v in spec.get("volumes") or []}
    mounts = c.get("volumeMounts") or []
    for m in mounts:
        if "subPath" in m or "subPathExpr" in m:
            p.append(f"{wname}: volumeMount {m.get('name')} uses subPath (files would never update)")
    cfg_mounts = [m for m in mounts if m.get("mountPath", "").rstrip("/") == CONFIG_DIR]
    cm_name = None
    if len(cfg_mounts) != 1:
        p.append(f"{wname}: expected one mount at {CONFIG_DIR}, found {len(cfg_mounts)}")
    else:
        v = vols.get(cfg_mounts[0]["name"]) or {}
        cm_name = (v.get("configMap") or {}).get("name")
        if not cm_name:
            p.append(f"{wname}: {CONFIG_DIR} is not a configMap volume")
        elif not any(meta_name(d) == cm_name for d in by_kind(docs, "ConfigMap")):
            p.append(f"{wname}: volume references ConfigMap {cm_name}, which is not rendered")
        items = (v.get("configMap") or {}).get("items")
        if items and not any(i.get("path") == "tidegate.yaml" for i in items):
            p.append(f"{wname}: configMap items do not project tidegate.yaml")
    st = [m for m in mounts if m.get("mountPath", "").rstrip("/") == STATE_DIR]
    if len(st) != 1:
        p.append(f"{wname}: expected one mount at {STATE_DIR}")
    else:
        if st[0].get("readOnly"):
            p.append(f"{wname}: {STATE_DIR} is mounted read-only")
        if "emptyDir" not in (vols.get(st[0]["name"]) or {}):
            p.append(f"{wname}: {STATE_DIR} is not an emptyDir")
    # Grace period above the drain time.
    tgps = spec.get("terminationGracePeriodSeconds")
    if cfg is not None:
        grace = duration_seconds((cfg.get("server") or {}).get("shutdown_grace", "30s"))
        delay = duration_seconds((cfg.get("server") or {}).get("shutdown_delay", "0s"))
        sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        if not isinstance(tgps, int) or tgps <= grace + delay + sleep:
            p.append(f"{wname}: terminationGracePeriodSeconds {tgps!r} must exceed shutdown_grace "
                     f"{grace}s + shutdown_delay {delay}s + preStop sleep {sleep}s")
    # Admin token from a Secret.
    env = {e.get("name"): e for e in c.get("env") or []}
    tok = env.get("TIDEGATE_ADMIN_TOKEN")
    ref = ((tok or {}).get("valueFrom") or {}).get("secretKeyRef") if tok else None
    if not ref or "value" in (tok or {}):
        p.append(f"{wname}: TIDEGATE_ADMIN_TOKEN must come from a secretKeyRef")
    else:
        at = values["adminToken"]
        if at["existingSecret"]:
            if (ref.get("name"), ref.get("key")) != (at["existingSecret"], at["existingSecretKey"]):
                p.append(f"{wname}: admin token ref {ref} does not point at the existing Secret")
            if any(meta_name(s) == at["existingSecret"] for s in by_kind(docs, "Secret")):
                p.append("the chart renders the Secret it was told already exists")
        else:
            sec = [s for s in by_kind(docs, "Secret") if meta_name(s) == ref.get("name")]
            if len(sec) != 1:
                p.append(f"{wname}: admin token Secret {ref.get('name')} is not rendered")
            else:
                raw = (sec[0].get("data") or {}).get(ref.get("key"))
                tokval = base64.b64decode(raw).decode() if raw else ""
                if len(tokval) < 32:
                    p.append(f"{wname}: generated admin token is {len(tokval)} chars, expected >= 32")
    # Provider keys: env from secretKeyRef, files from secret volumes mounted as directories.
    for pname, prov in ((cfg or {}).get("providers") or {}).items():
        var = (prov or {}).get("api_key_env")
        if var:
            e = env.get(var)
            if not e or not ((e.get("valueFrom") or {}).get("secretKeyRef")) or "value" in e:
                p.append(f"{wname}: provider {pname} api_key_env {var} is not wired from a secretKeyRef")
        path = (prov or {}).get("api_key_file")
        if path:
            ok = False
            for m in mounts:
                mp = m.get("mountPath", "").rstrip("/") + "/"
                if path.startswith(mp) and "secret" in (vols.get(m.get("name")) or {}):
                    ok = True
            if not ok:
                p.append(f"{wname}: provider {pname} api_key_file {path} is not inside a mounted Secret directory")
    for e in c.get("env") or []:
        if "value" in e and re.search(r"(?i)(key|token|secret|password)", e.get("name", "")):
            p.append(f"{wname}: env {e['name']} has a literal value; secrets must come from Secrets")
    # Config roll-out annotation only when asked for.
    ann = (workload["spec"]["template"].get("metadata") or {}).get("annotations") or {}
    if not re.fullmatch(r"[0-9a-f]{64}", str(ann.get("checksum/static-config", ""))):
        p.append(f"{wname}: no checksum/static-config annotation: a change to config.server, "
                 "config.state or config.circuit_breaker (read at start) would not roll the pods")
    if values.get("rollOnConfigChange") != ("checksum/config" in ann):
        p.append(f"{wname}: checksum/config annotation present={('checksum/config' in ann)} but rollOnConfigChange={values.get('rollOnConfigChange')}")
    return p, cm_name


def check_app_env(workload, spec, values):
    """The app containers of a sidecar pod point their SDKs at the loopback data plane."""
    p = []
    port = values["server"]["port"]
    host = "[::1]" if values["server"]["listenAddress"].strip("[]") == "::1" else "127.0.0.1"
    want = {"OPENAI_BASE_URL": f"http://{host}:{port}/v1", "ANTHROPIC_BASE_URL": f"http://{host}:{port}"}
    apps = [c for c in spec.get("containers") or [] if c.get("name") != values["containerName"]]
    if not apps:
        p.append(f"{meta_name(workload)}: no app container")
    for c in apps:
        env = {e.get("name"): e.get("value") for e in c.get("env") or []}
        for k, v in want.items():
            if env.get(k) != v:
                p.append(f"{meta_name(workload)}/{c.get('name')}: {k}={env.get(k)!r}, expected {v}")
    return p


def check_pod_security(docs):
    """Every pod the tidegate chart renders (gateway, demo app, helm test) meets the Pod Security
    Standards "restricted" profile, so it runs in namespaces that enforce it."""
    p = []
    for d in docs:
        labels = (d.get("metadata") or {}).get("labels") or {}
        if d.get("kind") == "Pod":
            spec = d["spec"]
        elif d.get("kind") == "Deployment":
            spec = d["spec"]["template"]["spec"]
        else:
            continue
        if not str(labels.get("helm.sh/chart", "")).startswith("tidegate-"):
            continue  # an app chart's own pod: its containers are its business
        w = f"{d['kind']}/{meta_name(d)}"
        for k in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(k):
                p.append(f"{w}: {k}")
        for v in spec.get("volumes") or []:
            if set(v) - {"name", "configMap", "secret", "emptyDir", "projected", "downwardAPI", "csi",
                         "persistentVolumeClaim", "ephemeral"}:
                p.append(f"{w}: volume {v.get('name')} of a type the restricted profile forbids")
        psc = spec.get("securityContext") or {}
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            sc = c.get("securityContext") or {}
            eff = lambda k: sc.get(k, psc.get(k))
            cn = f"{w}/{c.get('name')}"
            if sc.get("privileged"):
                p.append(f"{cn}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                p.append(f"{cn}: allowPrivilegeEscalation is not false")
            if eff("runAsNonRoot") is not True:
                p.append(f"{cn}: runAsNonRoot is not true")
            if eff("runAsUser") == 0:
                p.append(f"{cn}: runAsUser 0")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                p.append(f"{cn}: capabilities.drop lacks ALL")
            if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
                p.append(f"{cn}: adds capabilities")
            if (eff("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                p.append(f"{cn}: no RuntimeDefault seccomp profile")
    return p


def check_release(docs, values, notes, expect_app_chart=False):
    """All content assertions for one rendered case. Returns a list of problems."""
    p = []
    mode = values["mode"]
    native = values["sidecar"]["native"]
    kinds = [d.get("kind") for d in docs]
    for d in docs:
        n = meta_name(d) or ""
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", n) or len(n) > 253:
            p.append(f"{d.get('kind')}: bad name {n!r}")
        labels = (d.get("metadata") or {}).get("labels") or {}
        if str(labels.get("helm.sh/chart", "")).startswith("tidegate-"):
            for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by"):
                if k not in labels:
                    p.append(f"{d.get('kind')}/{n}: label {k} missing")
    p += check_pod_security(docs)
    pods = gateway_pods(docs, values)
    if mode == "deployment":
        deps = [d for d in by_kind(docs, "Deployment") if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"]
        if len(deps) != 1:
            p.append(f"deployment mode: expected one gateway Deployment, found {len(deps)}")
        expect_native = False
    else:
        for k in ("Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"):
            if k in kinds:
                p.append(f"sidecar mode renders a {k}")
        expect_native = native
        if not pods and (values["sidecar"]["demoApp"]["enabled"] or expect_app_chart):
            p.append("sidecar mode: no pod runs the gateway")
    if not pods:
        if mode == "deployment" or values["sidecar"]["demoApp"]["enabled"] or expect_app_chart:
            p.append("no gateway container rendered")
    cfg = None
    for (w, spec, c, where) in pods:
        # The ConfigMap the pod mounts is checked with the pod's config.
        mount = [m for m in c.get("volumeMounts") or [] if m.get("mountPath", "").rstrip("/") == CONFIG_DIR]
        vol = {v["name"]: v for v in spec.get("volumes") or []}.get(mount[0]["name"]) if mount else None
        cm_name = ((vol or {}).get("configMap") or {}).get("name")
        cfg_p, cfg = check_configmap(docs, values, cm_name) if cm_name else (["no config volume"], None)
        p += cfg_p
        gp, _ = check_gateway(docs, values, w, spec, c, where, cfg, expect_native)
        p += gp
        if mode == "sidecar":
            p += check_app_env(w, spec, values)
        if w["spec"]["selector"]["matchLabels"].items() - w["spec"]["template"]["metadata"]["labels"].items():
            p.append(f"{meta_name(w)}: selector does not match the pod labels")
    if not pods:
        # Sidecar mode without a pod: the ConfigMap is still rendered and must be clean.
        cms = by_kind(docs, "ConfigMap")
        if len(cms) != 1:
            p.append(f"expected one ConfigMap, found {len(cms)}")
        else:
            p += check_configmap(docs, values, meta_name(cms[0]))[0]
    if mode == "deployment" and pods:
        p += check_deployment_extras(docs, values, pods[0])
    if expect_app_chart:
        pass  # helm shows only the top chart's NOTES.txt; the app chart has none
    elif not notes.strip():
        p.append("NOTES.txt renders empty")
    elif mode == "deployment" and "port-forward" not in notes:
        p.append("NOTES.txt (deployment) lacks the port-forward hint")
    elif mode == "sidecar" and 'include "tidegate.sidecar"' not in notes:
        p.append("NOTES.txt (sidecar) lacks the include snippet")
    return p


def check_deployment_extras(docs, values, pod):
    p = []
    w, spec, c, _ = pod
    pod_labels = w["spec"]["template"]["metadata"]["labels"]
    dep = meta_name(w)
    svcs = by_kind(docs, "Service")
    if len(svcs) != 1:
        return p + [f"expected one Service, found {len(svcs)}"]
    svc = svcs[0]
    if not is_subset(svc["spec"].get("selector"), pod_labels) or not svc["spec"].get("selector"):
        p.append("Service selector does not select the gateway pods")
    ports = {sp.get("name"): sp for sp in svc["spec"].get("ports") or []}
    for name, port, target in (("http", values["service"]["port"], values["server"]["port"]),
                               ("admin", values["service"]["adminPort"], values["server"]["adminPort"])):
        sp = ports.get(name)
        if not sp:
            p.append(f"Service lacks port {name}")
            continue
        if sp.get("port") != port:
            p.append(f"Service port {name} is {sp.get('port')}, expected {port}")
        if resolve_port(c, sp.get("targetPort")) != target:
            p.append(f"Service port {name} targetPort {sp.get('targetPort')!r} does not reach container port {target}")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    if values["autoscaling"]["enabled"]:
        if len(hpas) != 1:
            p.append("autoscaling.enabled but no HorizontalPodAutoscaler")
        else:
            ref = hpas[0]["spec"]["scaleTargetRef"]
            if (ref.get("kind"), ref.get("name")) != ("Deployment", dep):
                p.append(f"HPA scaleTargetRef {ref} is not Deployment/{dep}")
            if not hpas[0]["spec"].get("metrics"):
                p.append("HPA has no metrics")
        if "replicas" in w["spec"]:
            p.append("Deployment sets replicas while the HPA owns them")
    else:
        if hpas:
            p.append("HPA rendered while autoscaling.enabled is false")
        if w["spec"].get("replicas") != values["replicaCount"]:
            p.append(f"Deployment replicas {w['spec'].get('replicas')} != replicaCount {values['replicaCount']}")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if values["podDisruptionBudget"]["enabled"]:
        if len(pdbs) != 1:
            p.append("podDisruptionBudget.enabled but no PodDisruptionBudget")
        elif not is_subset(pdbs[0]["spec"]["selector"].get("matchLabels"), pod_labels):
            p.append("PDB selector does not select the gateway pods")
    elif pdbs:
        p.append("PDB rendered while disabled")
    sms = by_kind(docs, "ServiceMonitor")
    if values["metrics"]["serviceMonitor"]["enabled"]:
        if len(sms) != 1:
            p.append("serviceMonitor.enabled but no ServiceMonitor")
        else:
            p += check_servicemonitor(sms[0], svc)
    elif sms:
        p.append("ServiceMonitor rendered while disabled")
    tests = [d for d in by_kind(docs, "Pod") if ((d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test")]
    if len(tests) != 1:
        p.append("expected one helm test Pod")
    return p


def check_servicemonitor(sm, svc):
    """ServiceMonitor is a CRD (no schema in kubernetes-validate): check its shape by hand."""
    p = []
    if sm.get("apiVersion") != "monitoring.coreos.com/v1":
        p.append(f"ServiceMonitor apiVersion {sm.get('apiVersion')}")
    spec = sm.get("spec") or {}
    allowed = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
               "sampleLimit", "targetLimit", "attachMetadata", "labelLimit", "labelNameLengthLimit",
               "labelValueLengthLimit", "keepDroppedTargets", "scrapeProtocols", "fallbackScrapeProtocol",
               "scrapeClass", "bodySizeLimit"}
    if set(spec) - allowed:
        p.append(f"ServiceMonitor spec has unknown fields {sorted(set(spec) - allowed)}")
    ml = (spec.get("selector") or {}).get("matchLabels") or {}
    if not ml or not is_subset(ml, svc["metadata"].get("labels") or {}):
        p.append("ServiceMonitor selector does not match the Service labels")
    svc_ports = {sp.get("name") for sp in svc["spec"]["ports"]}
    eps = spec.get("endpoints") or []
    if not eps:
        p.append("ServiceMonitor has no endpoints")
    ep_allowed = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "relabelings",
                  "metricRelabelings", "honorLabels", "honorTimestamps", "params", "bearerTokenSecret",
                  "authorization", "basicAuth", "oauth2", "tlsConfig", "proxyUrl", "followRedirects",
                  "enableHttp2", "filterRunning", "trackTimestampsStaleness"}
    dur = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
    for ep in eps:
        if set(ep) - ep_allowed:
            p.append(f"ServiceMonitor endpoint has unknown fields {sorted(set(ep) - ep_allowed)}")
        if ep.get("port") not in svc_ports or ep.get("port") != "admin":
            p.append(f"ServiceMonitor endpoint port {ep.get('port')!r} is not the Service's admin port")
        if ep.get("path") != "/metrics":
            p.append(f"ServiceMonitor endpoint path {ep.get('path')!r}")
        for k in ("interval", "scrapeTimeout"):
            if k in ep and not dur.match(str(ep[k])):
                p.append(f"ServiceMonitor {k} {ep[k]!r} is not a Prometheus duration")
    ns = sm["metadata"].get("namespace")
    if ns and ns != svc["metadata"].get("namespace"):
        names = (spec.get("namespaceSelector") or {}).get("matchNames") or []
        if svc["metadata"].get("namespace") not in names:
            p.append("ServiceMonitor in another namespace without a namespaceSelector for the Service's")
    return p


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------

def dockerignored(path, patterns):
    """Docker's .dockerignore matching, simplified: last matching pattern wins, ! re-includes."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(pre, pat) or (pat.startswith("**/") and fnmatch.fnmatch(pre, pat[3:]))
               for pre in prefixes):
            ignored = not neg
    return ignored


def check_dockerfile(repo, chart_args):
    import dockerfile  # BuildKit's parser
    p = []
    path = os.path.join(repo, "Dockerfile")
    try:
        cmds = dockerfile.parse_file(path)
    except dockerfile.GoParseError as e:
        return [f"Dockerfile does not parse: {e}"]
    ignore = [l.strip() for l in open(os.path.join(repo, ".dockerignore")) if l.strip() and not l.startswith("#")]
    for must in ("target", ".git"):
        if not dockerignored(must, ignore):
            p.append(f".dockerignore does not exclude {must}/")
    stages, cur = [], None
    for c in cmds:
        if c.cmd == "FROM":
            cur = {"from": c.value, "cmds": []}
            stages.append(cur)
        elif cur is not None:
            cur["cmds"].append(c)
        else:
            p.append(f"{c.cmd} before the first FROM")
    if len(stages) != 2:
        return p + [f"expected 2 stages (builder, runtime), found {len(stages)}"]
    build, run = stages
    if build["from"] != ("rust:1.95-bookworm", "AS", "builder") and build["from"] != ("rust:1.95-bookworm", "as", "builder"):
        p.append(f"builder stage is FROM {' '.join(build['from'])}, expected rust:1.95-bookworm AS builder")
    if run["from"][0] != "gcr.io/distroless/cc-debian12:nonroot":
        p.append(f"runtime stage is FROM {run['from'][0]}, expected gcr.io/distroless/cc-debian12:nonroot")
    runs = [c.value[0] for c in build["cmds"] if c.cmd == "RUN"]
    builds = [r for r in runs if "cargo build --release --locked --bin tidegate" in r]
    if len(builds) != 2:
        p.append(f"expected 2 `cargo build --release --locked --bin tidegate` (dependency layer + app), found {len(builds)}")
    # The stub layer must provide every target file Cargo.toml declares, or cargo refuses the manifest.
    cargo = tomllib.load(open(os.path.join(repo, "Cargo.toml"), "rb"))
    declared = []
    for kind, default in (("bench", "benches/{}.rs"), ("test", "tests/{}.rs"), ("example", "examples/{}.rs"), ("bin", "src/bin/{}.rs")):
        for t in cargo.get(kind, []):
            declared.append(t.get("path") or default.format(t["name"]))
    if builds:
        stub = builds[0]
        for f in declared:
            if f not in stub:
                p.append(f"Cargo.toml declares {f}, but the dependency layer does not create a stub for it")
    copied = []
    for c in build["cmds"]:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            copied += list(c.value[:-1])
    for src in copied:
        if not os.path.exists(os.path.join(repo, src)):
            p.append(f"COPY {src}: not in the repository")
        elif dockerignored(src, ignore):
            p.append(f"COPY {src}: excluded by .dockerignore")
    # Files the crate embeds at compile time must be in the build context.
    for root, _, files in os.walk(os.path.join(repo, "src")):
        for fn in files:
            if not fn.endswith(".rs"):
                continue
            text = open(os.path.join(root, fn), encoding="utf-8", errors="replace").read()
            for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', text):
                target = os.path.relpath(os.path.normpath(os.path.join(root, m.group(1))), repo)
                if not any(target == c or target.startswith(c.rstrip("/") + "/") for c in copied):
                    p.append(f"{os.path.relpath(os.path.join(root, fn), repo)} embeds {target}, which no COPY brings in")
    final = {c.cmd: c for c in run["cmds"]}
    rcopies = [c for c in run["cmds"] if c.cmd == "COPY"]
    if len(rcopies) != 1 or not any(f == "--from=builder" for f in rcopies[0].flags) or rcopies[0].value[-1] != "/usr/local/bin/tidegate":
        p.append("runtime stage must copy only the binary from the builder to /usr/local/bin/tidegate")
    user = final.get("USER")
    if not user or user.value[0].split(":")[0] in ("0", "root") or not user.value[0].split(":")[0].isdigit():
        p.append(f"runtime USER {user.value if user else None}: expected a numeric non-root user")
    exposed = set(final["EXPOSE"].value) if "EXPOSE" in final else set()
    if not {"8080", "9090"} <= exposed:
        p.append(f"EXPOSE {sorted(exposed)}: expected 8080 and 9090")
    ep, cmd = final.get("ENTRYPOINT"), final.get("CMD")
    if not ep or not ep.json or list(ep.value) != ["/usr/local/bin/tidegate"]:
        p.append("ENTRYPOINT must be the exec form [\"/usr/local/bin/tidegate\"]")
    if not cmd or not cmd.json or list(cmd.value) != chart_args:
        p.append(f"CMD {list(cmd.value) if cmd else None} differs from the chart's args {chart_args}")
    return p


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

def check_static_checksum(args):
    """checksum/static-config follows config.server, config.state and config.circuit_breaker
    (read once at start: a change must roll the pods) and nothing else (the rest hot-reloads)."""
    def annotation(label, overlay):
        work = case_dir(args, "static-checksum-" + label)
        path = os.path.join(work, "overlay.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump(overlay, fh)
        r = render(args.renderer, args.chart, [path], "rel", "apps", work)
        if not r.ok:
            return None, r.error
        dep = by_kind(r.docs, "Deployment")[0]
        return ((dep["spec"]["template"]["metadata"].get("annotations") or {}).get("checksum/static-config"), "")
    base, err = annotation("base", {"mode": "deployment"})
    if base is None:
        return [f"base render failed: {err}"]
    p = []
    for label, overlay, changes in (
        ("server", {"config": {"server": {"max_body_bytes": "1KiB"}}}, True),
        ("state", {"config": {"state": {"backend": "memory", "timeout": "50ms"}}}, True),
        ("breaker", {"config": {"circuit_breaker": {"consecutive_failures": 3}}}, True),
        ("label", {"config": {"label": "another-version"}}, False),
        ("logging", {"config": {"logging": {"sample_rate": 0.5}}}, False),
    ):
        got, err = annotation(label, dict(overlay, mode="deployment"))
        if got is None:
            p.append(f"{label}: render failed: {err}")
        elif (got != base) != changes:
            p.append(f"config.{label} change {'did not change' if changes else 'changed'} checksum/static-config")
    return p


def case_dir(args, label):
    d = os.path.join(args.work, re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_"))
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def run_positive(rep, args, schema, app_version, label, chart_dir, values_files, kube_versions,
                 release="rel", namespace="apps", tidegate_values=lambda v: v, app_chart=False):
    work = case_dir(args, label)
    # Rendered for the oldest version it is validated against (.Capabilities checks apply).
    oldest = min(kube_versions, key=lambda v: tuple(int(x) for x in v.split(".")))
    r = render(args.renderer, chart_dir, values_files, release, namespace, work, f"v{oldest}.0")
    vals = r.values
    tv = tidegate_values(vals) if vals is not None else None
    rep.check(f"{label}: helm lint (strict)", helm_lint(chart_dir, vals if values_files else None, work)
              if vals is not None or not values_files else ["no values to lint"])
    rep.check(f"{label}: values.schema.json", schema_errors(schema, tv) if tv is not None else ["renderer wrote no values"])
    rep.check(f"{label}: render", [] if r.ok else [r.error])
    if not r.ok:
        return None
    rep.check(f"{label}: kubernetes-validate {','.join(kube_versions)} ({len(r.docs)} manifests)",
              k8s_validate(r.docs, kube_versions))
    tv = dict(tv, _appVersion=app_version)
    rep.check(f"{label}: rendered content", check_release(r.docs, tv, r.notes, expect_app_chart=app_chart))
    return r, tv


def parse_expectation(path):
    text = open(path).read()
    first = text.split("\n", 1)[0]
    m = re.match(r"#\s*expect:\s*(schema|render)\s+(.+?)\s*$", first)
    if not m:
        raise SystemExit(f"{path}: first line must be '# expect: schema|render <message substring>'")
    kv = re.search(r"(?m)^#\s*kube-version:\s*(v[0-9.]+)\s*$", text)
    return m.group(1), m.group(2), kv.group(1) if kv else None


def run_negative(rep, args, schema, path):
    stage, needle, kube_version = parse_expectation(path)
    name = os.path.relpath(path, args.repo)
    work = case_dir(args, "invalid-" + os.path.basename(path))
    r = render(args.renderer, args.chart, [path], "rel", "apps", work, kube_version)
    s_errs = schema_errors(schema, r.values) if r.values is not None else []
    p = []
    if stage == "schema":
        if not any(needle in e for e in s_errs):
            p.append(f"expected a values.schema.json error containing {needle!r}; got {s_errs or 'none'}")
        lint = helm_lint(args.chart, r.values, work) if r.values is not None else []
        if not any("ERROR" in x for x in lint):
            p.append("helm lint accepted values that violate values.schema.json")
        detail = f"schema rejects it ({needle!r}); helm lint rejects it"
    else:
        if s_errs:
            p.append(f"meant to pass the schema and fail in the templates, but the schema rejects it: {s_errs}")
        if r.ok:
            p.append(f"rendered fine; expected a template failure containing {needle!r}")
        elif needle not in r.error:
            p.append(f"render failed, but without {needle!r}: {r.error}")
        detail = f"templates fail with {needle!r}"
    rep.check(f"negative {name}: {detail}", p)


def run_self_test(rep, args, sidecar_case, deployment_case):
    """Break good manifests on purpose; the checks must notice each break."""
    def mutate_pod(docs, values, fn):
        docs = copy.deepcopy(docs)
        w, spec, c, where = gateway_pods(docs, values)[0]
        fn(w, spec, c, docs)
        return docs

    def set_(d, k, v):
        d[k] = v

    def cm_put(docs, key, val):
        for d in by_kind(docs, "ConfigMap"):
            d["data"]["tidegate.yaml"] += f"\n{key}: {val}\n"

    def token_of(docs):
        for s in by_kind(docs, "Secret"):
            if "token" in (s.get("data") or {}):
                return base64.b64decode(s["data"]["token"]).decode()
        return "x" * 40

    sr, dr = sidecar_case[0], deployment_case[0]
    # (name, case, mutation, text the resulting problem must contain)
    mutations = [
        ("sidecar without restartPolicy: Always", sidecar_case, lambda w, s, c, d: c.pop("restartPolicy"),
         "restartPolicy: Always"),
        ("sidecar moved to containers", sidecar_case,
         lambda w, s, c, d: (s["initContainers"].remove(c), s["containers"].append(c)), "expected in initContainers"),
        ("config mounted with subPath", sidecar_case,
         lambda w, s, c, d: c["volumeMounts"][0].update(subPath="tidegate.yaml", mountPath=CONFIG_FILE), "uses subPath"),
        ("admin token copied into the ConfigMap", sidecar_case, lambda w, s, c, d: cm_put(d, "label", token_of(d)),
         "ConfigMap contains a secret value"),
        ("inline api_key in the ConfigMap", deployment_case,
         lambda w, s, c, d: cm_put(d, "x", "{api_key: abcdefgh12345678}"), "inline secret material"),
        ("readOnlyRootFilesystem false", deployment_case,
         lambda w, s, c, d: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
        ("capabilities not dropped", deployment_case, lambda w, s, c, d: c["securityContext"].pop("capabilities"),
         "capabilities.drop"),
        ("runs as root", deployment_case,
         lambda w, s, c, d: (c["securityContext"].update(runAsUser=0), s["securityContext"].update(runAsUser=0)),
         "runAsUser 0"),
        ("no seccomp profile", deployment_case,
         lambda w, s, c, d: (c["securityContext"].pop("seccompProfile"), s["securityContext"].pop("seccompProfile")),
         "seccompProfile"),
        ("grace period equal to shutdown_grace", sidecar_case,
         lambda w, s, c, d: set_(s, "terminationGracePeriodSeconds", 30), "terminationGracePeriodSeconds 30"),
        ("grace period that leaves out shutdown_delay", deployment_case,
         lambda w, s, c, d: set_(s, "terminationGracePeriodSeconds", 121), "shutdown_delay 5s"),
        ("pod template without checksum/static-config", deployment_case,
         lambda w, s, c, d: w["spec"]["template"]["metadata"]["annotations"].pop("checksum/static-config"),
         "no checksum/static-config annotation"),
        ("admin token as a literal env value", deployment_case,
         lambda w, s, c, d: c["env"].__setitem__(0, {"name": "TIDEGATE_ADMIN_TOKEN", "value": "literal"}),
         "TIDEGATE_ADMIN_TOKEN must come from a secretKeyRef"),
        ("provider key as a literal env value", deployment_case,
         lambda w, s, c, d: c["env"].__setitem__(1, {"name": "OPENAI_API_KEY", "value": "sk-literal"}),
         "OPENAI_API_KEY is not wired from a secretKeyRef"),
        ("readiness probe on the data port", deployment_case,
         lambda w, s, c, d: c["readinessProbe"]["httpGet"].update(port="http"), "readinessProbe port"),
        ("liveness probe on /readyz", sidecar_case,
         lambda w, s, c, d: c["livenessProbe"]["httpGet"].update(path="/readyz"), "livenessProbe path"),
        ("state dir on the root filesystem", deployment_case, lambda w, s, c, d: c["volumeMounts"].pop(1),
         "one mount at /var/lib/tidegate"),
        ("Service targets the wrong port", deployment_case,
         lambda w, s, c, d: by_kind(d, "Service")[0]["spec"]["ports"][0].update(targetPort=9999), "targetPort 9999"),
        ("ServiceMonitor scrapes the data port", deployment_case,
         lambda w, s, c, d: by_kind(d, "ServiceMonitor")[0]["spec"]["endpoints"][0].update(port="http"),
         "not the Service's admin port"),
        ("demo app container may escalate privileges", sidecar_case,
         lambda w, s, c, d: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
         "app: allowPrivilegeEscalation"),
        ("app not pointed at the sidecar", sidecar_case,
         lambda w, s, c, d: s["containers"][0]["env"].__setitem__(0, {"name": "OPENAI_BASE_URL", "value": "https://api.openai.com/v1"}),
         "OPENAI_BASE_URL"),
    ]
    for name, (r, v), fn, needle in mutations:
        try:
            docs = mutate_pod(r.docs, v, fn)
        except Exception as e:
            rep.check(f"self-test: {name}", [f"mutation could not be applied: {e!r}"])
            continue
        found = check_release(docs, v, r.notes)
        if os.environ.get("CHECKS_DEBUG"):
            print("      caught:", found)
        rep.check(f"self-test: assertions catch '{name}'",
                  [] if any(needle in f for f in found) else [f"no problem mentioning {needle!r}; got {found}"])
    # The Dockerfile check must catch a broken Dockerfile.
    good = open(os.path.join(args.repo, "Dockerfile")).read()
    fake = tempfile.mkdtemp(prefix="dockerfile-", dir=args.work)
    for f in ("Cargo.toml", ".dockerignore", "src", "config"):
        os.symlink(os.path.join(args.repo, f), os.path.join(fake, f))
    chart_args = ["serve", "--config", CONFIG_FILE, "--state-dir", STATE_DIR]
    for name, broken, needle in (
        ("stub for benches/overhead.rs missing", good.replace("echo 'fn main() {}' > benches/overhead.rs", "true"), "benches/overhead.rs"),
        ("runs as root", re.sub(r"(?m)^USER .*$", "USER root", good), "non-root"),
        ("CMD drifts from the chart", good.replace('"--state-dir", "/var/lib/tidegate"', '"--state-dir", "/tmp"'), "differs from the chart"),
        ("config/ not copied", good.replace("COPY config ./config", ""), "embeds config/"),
    ):
        with open(os.path.join(fake, "Dockerfile"), "w") as fh:
            fh.write(broken)
        found = check_dockerfile(fake, chart_args)
        rep.check(f"self-test: Dockerfile check catches '{name}'",
                  [] if any(needle in f for f in found) else [f"no problem mentioning {needle!r}; got {found}"])
    # kubernetes-validate must catch schema breaks too.
    bad = copy.deepcopy(dr.docs)
    by_kind(bad, "Deployment")[0]["spec"]["replicaz"] = 3
    rep.check("self-test: kubernetes-validate catches an unknown field", [] if k8s_validate(bad, [LATEST_KUBE]) else ["not caught"])
    rep.check("self-test: native sidecar is rejected by the Kubernetes 1.27 schema (needs 1.28+/1.29)",
              [] if k8s_validate(sr.docs, ["1.27"]) else ["1.27 schema accepted initContainers[].restartPolicy"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--keep", help="keep rendered manifests in this directory")
    args = ap.parse_args()
    args.repo = os.path.abspath(args.repo)
    args.chart = os.path.join(args.repo, "helm", "tidegate")
    args.work = args.keep or tempfile.mkdtemp(prefix="tidegate-chart-")
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    rep = Report()
    schema = json.load(open(os.path.join(args.chart, "values.schema.json")))
    jsonschema.Draft7Validator.check_schema(schema)
    app_version = str(yaml.safe_load(open(os.path.join(args.chart, "Chart.yaml")))["appVersion"])

    print("== tidegate chart: lint, schema, render, kubernetes-validate, content")
    run_positive(rep, args, schema, app_version, "defaults", args.chart, [], [OLDEST_KUBE, LATEST_KUBE])
    results = {}
    for f in sorted(glob.glob(os.path.join(args.chart, "ci", "*.yaml"))):
        base = os.path.basename(f)
        results[base] = run_positive(rep, args, schema, app_version, f"ci/{base}", args.chart, [f],
                                     KUBE_VERSIONS.get(base, DEFAULT_KUBE_VERSIONS))

    print("== example app chart (helm/examples/app-with-tidegate) including the sidecar templates")
    app_src = os.path.join(args.repo, "helm", "examples", "app-with-tidegate")
    app = os.path.join(args.work, "app-with-tidegate")
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(app_src, app)
    shutil.copytree(args.chart, os.path.join(app, "charts", "tidegate"))  # = helm dependency build
    run_positive(rep, args, schema, app_version, "example app chart", app,
                 [os.path.join(app, "values.yaml")], DEFAULT_KUBE_VERSIONS, release="shop",
                 tidegate_values=lambda v: v["tidegate"], app_chart=True)

    rep.check("checksum/static-config changes with config.server/state/circuit_breaker only",
              check_static_checksum(args))

    print("== Dockerfile")
    rep.check("Dockerfile: parses; stages, stub layer, COPY sources, non-root, ports, ENTRYPOINT/CMD",
              check_dockerfile(args.repo, ["serve", "--config", CONFIG_FILE, "--state-dir", STATE_DIR]))

    print("== negative cases: helm/test-values/invalid/*.yaml must be rejected")
    negs = sorted(glob.glob(os.path.join(args.repo, "helm", "test-values", "invalid", "*.yaml")))
    if not negs:
        rep.check("negative cases exist", ["no files in helm/test-values/invalid"])
    for f in negs:
        run_negative(rep, args, schema, f)

    print("== self-test: the checks fail on broken manifests")
    sc, dc = results.get("sidecar-demo.yaml"), results.get("deployment-full.yaml")
    if sc and dc:
        run_self_test(rep, args, sc, dc)
    else:
        rep.check("self-test inputs", ["ci/sidecar-demo.yaml and ci/deployment-full.yaml must render"])

    print(f"== {time.time() - t0:.1f}s; rendered output in {args.work}")
    print(f"{rep.passed} passed, {len(rep.failed)} failed")
    if rep.failed:
        print("failed checks:\n  " + "\n  ".join(rep.failed))
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
