"""The Kubernetes scaffold: valid manifests, kustomize builds every variant, nca computes the
spec's connectivity over the generated Deployments, the mounted Secrets exist with compose's
paths and contents, and under both meshes every listen port no flow names is denied."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from castle.errors import SpecError
from castle.io.write import write_outputs
from castle.readers.k8s import compare_k8s
from castle.targets.generate import build
from castle.targets.generate import generate as castle_generate
from tests.oracles import kube, reference
from tests.strategies import dump_toml
from tests.test_injection import CONTROL, PAYLOADS
from tests.test_k8s import CONTROLLER, EXAMPLE, SPECS, STRANGER, expected, namespaces_of, need

TIER_NS = SPECS / "k8s-tier-ns.toml"
INGRESS_NS = SPECS / "k8s-ingress-ns.toml"
CORPUS = [EXAMPLE, *sorted(SPECS.glob("*.toml"))]
VERSIONS = ("1.28", "1.37")
LINKERD_DENY = "config.linkerd.io/default-inbound-policy"
Docs = list[dict[str, Any]]


def variant(spec: Path, tmp: Path, mesh: str = "", workloads: bool = True) -> Path:
    """A copy of `spec` with a mesh and/or `[kubernetes] workloads = false`."""
    text = spec.read_text()
    if not workloads:
        if "[kubernetes]\n" in text:
            text = text.replace("[kubernetes]\n", "[kubernetes]\nworkloads = false\n", 1)
        else:
            text += "\n[kubernetes]\nworkloads = false\n"
    if mesh:
        text += f'\n[mesh]\nkind = "{mesh}"\n'
    path = tmp / "zones.toml"
    path.write_text(text)
    return path


def generate(spec: Path, out: Path, targets: list[str] | None = None) -> Any:
    """Write the spec's files (every target unless narrowed) into out; return the plan."""
    _, plan, outputs = build(spec, targets)
    write_outputs(out, outputs)
    return plan


def docs_of(path: Path) -> Docs:
    """The YAML documents of a file ([] when it does not exist)."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d] if path.exists() else []


def dummy_certs(out: Path, compose: dict[str, Any]) -> None:
    """One distinct file per compose secret, so contents can be traced through kustomize."""
    for name, secret in (compose.get("secrets") or {}).items():
        path = out / secret["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}\n")


def kustomize(folder: Path) -> Docs:
    """`kubectl kustomize FOLDER` (default load restrictor)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: `kubectl kustomize` cannot build the kustomization")
    proc = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


# -- validity ------------------------------------------------------------------------------


@pytest.mark.parametrize("mesh", ["", "istio", "linkerd"])
@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_workloads_pass_kubernetes_validate(spec: Path, mesh: str, tmp_path: Path) -> None:
    """namespaces.yaml and workloads.yaml pass kubernetes-validate --strict, 1.28 and newest."""
    need(kube.validate_skip_reason())
    generate(variant(spec, tmp_path, mesh), tmp_path / "out", ["k8s"])
    files = [tmp_path / "out" / "k8s" / n for n in ("namespaces.yaml", "workloads.yaml")]
    for version in VERSIONS:
        ok, log = kube.validate(files, version)
        assert ok, log


def test_kubernetes_validate_catches_a_bad_workload(tmp_path: Path) -> None:
    """Negative control: a misspelt Deployment field and a string replica count fail."""
    need(kube.validate_skip_reason())
    generate(EXAMPLE, tmp_path, ["k8s"])
    text = (tmp_path / "k8s" / "workloads.yaml").read_text()
    for bad in (text.replace("containerPort:", "containerport:", 1),
                text.replace("replicas: 1", 'replicas: "one"', 1)):
        path = tmp_path / "bad.yaml"
        path.write_text(bad)
        assert not kube.validate([path], VERSIONS[0])[0]


# -- kustomize ----------------------------------------------------------------------------

VARIANTS = {
    "example": (EXAMPLE, "", True),
    "tier-namespaces": (TIER_NS, "", True),
    "ingress-namespace": (INGRESS_NS, "", True),
    "istio": (EXAMPLE, "istio", True),
    "linkerd": (EXAMPLE, "linkerd", True),
    "istio-tier-namespaces": (TIER_NS, "istio", True),
    "linkerd-tier-namespaces": (TIER_NS, "linkerd", True),
    "istio-ingress-namespace": (INGRESS_NS, "istio", True),
    "linkerd-ingress-namespace": (INGRESS_NS, "linkerd", True),
    "workloads-off": (EXAMPLE, "", False),
    "workloads-off-linkerd": (TIER_NS, "linkerd", False),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_kustomize_builds_every_variant(name: str, tmp_path: Path) -> None:
    """`kubectl kustomize` builds each variant; the scaffold is there exactly when switched on."""
    spec, mesh, workloads = VARIANTS[name]
    path = variant(spec, tmp_path, mesh, workloads)
    raw = tomllib.loads(path.read_text())
    out = tmp_path / "out"
    generate(path, out)
    dummy_certs(out, yaml.safe_load((out / "compose.yaml").read_text()))
    docs = kustomize(out / "k8s")
    kinds = {d["kind"] for d in docs}
    ns_of = namespaces_of(raw)
    scaffold = {"Namespace", "Service", "Deployment"}
    if workloads:
        assert scaffold | {"ServiceAccount", "NetworkPolicy"} <= kinds
        names = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs
                 if d["kind"] == "Deployment"}
        assert names == {(ns_of[s], s) for s in raw["services"]}
        assert {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"} == set(
            ns_of.values())
    else:
        assert not kinds & scaffold
        assert ("ServiceAccount" in kinds) == bool(mesh)  # the mesh's identities stay
    if reference.expected(raw).tls:
        assert "Secret" in kinds
    for d in docs:
        if d["kind"] == "Namespace":
            labels = d["metadata"].get("labels", {})
            annotations = d["metadata"].get("annotations", {})
            assert (labels.get("istio-injection") == "enabled") == (mesh == "istio")
            assert (annotations.get(LINKERD_DENY) == "deny") == (mesh == "linkerd")
        else:
            assert d["metadata"]["namespace"] in set(ns_of.values())
    assert not (out / "k8s" / "workloads.yaml").exists() or workloads


def test_workloads_switch_keeps_only_the_policies(tmp_path: Path) -> None:
    """`[kubernetes] workloads = false` writes no scaffold and lists none; a wrong type fails."""
    _, _, outputs = build(variant(EXAMPLE, tmp_path, workloads=False), ["k8s"])
    assert {o.path for o in outputs} == {"k8s/networkpolicies.yaml", "k8s/kustomization.yaml"}
    kust = yaml.safe_load(next(o.content for o in outputs if "kustomization" in o.path))
    assert kust["resources"] == ["networkpolicies.yaml"]
    out = tmp_path / "out"
    shutil.copy(EXAMPLE, tmp_path / "zones.toml")
    castle_generate(tmp_path / "zones.toml", out, targets=["k8s"])
    assert (out / "k8s" / "workloads.yaml").exists()
    variant(EXAMPLE, tmp_path, workloads=False)  # the same file name: castle's stale files go
    castle_generate(tmp_path / "zones.toml", out, targets=["k8s"])
    assert sorted(p.name for p in (out / "k8s").iterdir() if p.is_file()) == [
        "kustomization.yaml", "networkpolicies.yaml"]
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text() + '\n[kubernetes]\nworkloads = "no"\n')
    with pytest.raises(SpecError, match=r"bad\.toml:\d+: error: kubernetes\.workloads"):
        build(bad, ["k8s"])


# -- the Secrets the Deployments mount, against compose ----------------------------------


@pytest.mark.parametrize("spec", [EXAMPLE, TIER_NS, INGRESS_NS], ids=lambda p: p.stem)
def test_mounted_secrets_exist_with_compose_paths(spec: Path, tmp_path: Path) -> None:
    """Every projected Secret and key exists in the kustomize output; each mount sits at the
    path compose mounts, holds the file compose mounts there, and the variables are equal."""
    generate(spec, tmp_path)
    compose = yaml.safe_load((tmp_path / "compose.yaml").read_text())
    dummy_certs(tmp_path, compose)
    docs = kustomize(tmp_path / "k8s")
    secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs
               if d["kind"] == "Secret"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    checked = 0
    for name, svc in compose["services"].items():
        pod = deployments[name]["spec"]["template"]["spec"]
        ns = deployments[name]["metadata"]["namespace"]
        (container,) = pod["containers"]
        # compose: /run/secrets/<target> holds the file of top-level secret <source>; a key
        # compose stages in /run/castle-secrets/ its entrypoint copies to /run/secrets/
        want = {}
        for s in svc.get("secrets", []):
            target = s["target"].removeprefix("/run/castle-secrets/")
            path = target if target.startswith("/") else f"/run/secrets/{target}"
            want[path] = (tmp_path / compose["secrets"][s["source"]]["file"]).read_text()
        for c in svc.get("configs", []):
            if c["target"] != "/etc/castle/entrypoint.sh":  # the copying step itself
                want[c["target"]] = (tmp_path / compose["configs"][c["source"]]["file"]
                                     ).read_text()
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        maps = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs
                if d["kind"] == "ConfigMap"}
        got = {}
        for mount in container.get("volumeMounts", []):
            assert mount["readOnly"] is True
            found = []
            for source in volumes[mount["name"]]["projected"]["sources"]:
                (kind, ref), = source.items()
                found += [(kind, ref["name"], i["key"]) for i in ref["items"]
                          if i["path"] == mount["subPath"]]
            assert len(found) == 1, mount
            kind, obj, key = found[0]
            if kind == "secret":
                data = secrets[(ns, obj)]["data"]  # KeyError: a Secret the pod cannot mount
                got[mount["mountPath"]] = base64.b64decode(data[key]).decode()
            else:
                got[mount["mountPath"]] = maps[(ns, obj)]["data"][key]
        assert got == want, name
        checked += len(got)
        # the TLS variables: compose's (after its $$ escape) and the Deployment's are equal
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        k8s_env = {e["name"]: e["value"] for e in container.get("env", [])}
        for key, value in env.items():
            if key in k8s_env:
                assert k8s_env[key].replace("$$", "$") == str(value).replace("$$", "$")
        paths = {v for v in env.values() if str(v).startswith("/run/secrets/")}
        assert paths <= set(got) and paths <= set(k8s_env.values())
        if got:
            mode = volumes["castle-tls"]["projected"]["defaultMode"]
            assert mode & 0o007 in (0, 0o4) and mode & 0o222 == 0  # nobody writes, key stays
    assert checked >= 3


def test_key_modes_follow_the_container_user(tmp_path: Path) -> None:
    """postgres gets group 999 and 0440; an unknown image 0444; compose `user` sets both."""
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text().replace(
        'environment = { DB_HOST = "db", DB_PORT = "5432" }',
        'environment = { DB_HOST = "db", FROM_HOST = "${SECRET}", PRICE = "$$5", DEBUG = true }'
        '\nuser = "1000:2000"'))
    generate(spec, tmp_path, ["k8s"])
    docs = {d["metadata"]["name"]: d for d in docs_of(tmp_path / "k8s" / "workloads.yaml")
            if d["kind"] == "Deployment"}
    db = docs["db"]["spec"]["template"]["spec"]
    assert db["securityContext"] == {"fsGroup": 999}
    assert db["volumes"][0]["projected"]["defaultMode"] == 0o440
    app = docs["app"]["spec"]["template"]["spec"]
    assert app["securityContext"] == {"runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 2000}
    env = {e["name"]: e["value"] for e in app["containers"][0]["env"]}
    assert env["PRICE"] == "$$5" and env["DEBUG"] == "true" and "FROM_HOST" not in env
    generate(EXAMPLE, tmp_path / "plain", ["k8s"])
    plain = {d["metadata"]["name"]: d for d in docs_of(tmp_path / "plain/k8s/workloads.yaml")
             if d["kind"] == "Deployment"}
    volume = plain["app"]["spec"]["template"]["spec"]["volumes"][0]
    assert volume["projected"]["defaultMode"] == 0o444


# -- network-config-analyzer over the generated Deployments --------------------------------


def outside_cluster(raw: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """The pods that are not the stack's (cluster DNS, ingress controller, a stranger)."""
    k = raw.get("kubernetes", {})
    pods = {f"{k.get('dns_namespace', 'kube-system')}/kube-dns":
            dict(k.get("dns_pod_labels", {"k8s-app": "kube-dns"})),
            STRANGER: {"app.kubernetes.io/name": "stranger"}}
    if k.get("ingress_namespace"):
        pods[f"{k['ingress_namespace']}/{CONTROLLER}"] = dict(k.get("ingress_pod_labels", {}))
        if k.get("ingress_pod_labels"):
            pods[f"{k['ingress_namespace']}/bystander"] = {"app.kubernetes.io/name": "by"}
    folder.mkdir(parents=True, exist_ok=True)
    return kube.write_cluster(folder, pods, {})


def nca_observed(raw: dict[str, Any], k8s: Path, policies: Path | None = None,
                 workloads: Path | None = None) -> kube.Connectivity:
    """nca over the generated policies, Deployments and Namespaces (stack renamed to one ns)."""
    pods, namespaces = outside_cluster(raw, k8s.parent / "outside")
    tuples = kube.nca_resources([policies or k8s / "networkpolicies.yaml"],
                                [workloads or k8s / "workloads.yaml", pods],
                                [k8s / "namespaces.yaml", namespaces])
    stack_ns = set(namespaces_of(raw).values())

    def rename(ep: str) -> str:
        ns, _, name = ep.partition("/")
        return f"stack/{name}" if name and ns in stack_ns else ep

    return kube.normalize({(rename(s), rename(d), p, port) for s, d, p, port in tuples}, "stack")


@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_nca_on_generated_deployments_sees_exactly_the_spec(spec: Path, tmp_path: Path) -> None:
    """nca, given castle's own Deployments and Namespaces, computes the reference's flows."""
    need(kube.nca_skip_reason())
    raw = tomllib.loads(spec.read_text())
    generate(spec, tmp_path, ["k8s"])
    got, want = nca_observed(raw, tmp_path / "k8s"), expected(raw)
    assert got.lines() == want.lines()


def test_nca_negative_controls_on_deployments(tmp_path: Path) -> None:
    """One policy removed, or one Deployment label changed: nca sees the difference."""
    need(kube.nca_skip_reason())
    raw = tomllib.loads(EXAMPLE.read_text())
    generate(EXAMPLE, tmp_path, ["k8s"])
    k8s = tmp_path / "k8s"
    want = expected(raw)
    policies = [d for d in docs_of(k8s / "networkpolicies.yaml")
                if d["metadata"]["name"] != "app-egress"]
    fewer = tmp_path / "fewer.yaml"
    fewer.write_text(yaml.safe_dump_all(policies))
    got = nca_observed(raw, k8s, policies=fewer)
    assert ("app", "db", "tcp") in want.pods and ("app", "db", "tcp") not in got.pods
    loads = docs_of(k8s / "workloads.yaml")
    for d in loads:
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "db":
            d["spec"]["template"]["metadata"]["labels"] = {"app.kubernetes.io/name": "dbx"}
            d["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": "dbx"}
    relabelled = tmp_path / "relabelled.yaml"
    relabelled.write_text(yaml.safe_dump_all(loads))
    got = nca_observed(raw, k8s, workloads=relabelled)
    assert got != want and ("app", "db", "tcp") not in got.pods


def test_matrix_artifacts_reads_the_deployments(tmp_path: Path) -> None:
    """compare_k8s evaluates the policies over the generated Deployments' labels: a label
    edited in workloads.yaml is STRICTER (the policies no longer select db)."""
    plan = generate(EXAMPLE, tmp_path, ["k8s"])
    assert compare_k8s(plan, tmp_path) == ({}, [])
    path = tmp_path / "k8s" / "workloads.yaml"
    path.write_text(path.read_text().replace('"app.kubernetes.io/name": "db"',
                                             '"app.kubernetes.io/name": "dbx"'))
    marks, _ = compare_k8s(plan, tmp_path)
    assert marks[("app", "db")] == "STRICTER(k8s)"


# -- overlapping selectors ------------------------------------------------------------------

OVERLAP = """version = 1
[stack]
name = "s"
[[tiers]]
name = "t"
[services.a]
tier = "t"
image = "x"
listen = [80]
{a}
[services.b]
tier = "t"
image = "x"
listen = [81]
{b}
[[flows]]
from = "a"
to = "b"
"""


@pytest.mark.parametrize(("a", "b", "at", "line"), [
    ('labels = { app = "shop" }', 'labels = { app = "shop" }', "a", 10),
    ('labels = { app = "shop" }', 'labels = { app = "shop", role = "b" }', "a", 10),
    ('labels = { app = "shop", role = "a" }', 'labels = { app = "shop" }', "b", 15),
    ("", 'labels = { "app.kubernetes.io/name" = "a", x = "y" }', "b", 15),
], ids=["identical", "subset", "superset", "default-name"])
def test_overlapping_selectors_are_an_error(a: str, b: str, at: str, line: int,
                                            tmp_path: Path) -> None:
    """Labels that select another service's pods are an error at the line of the labels."""
    spec = tmp_path / "zones.toml"
    spec.write_text(OVERLAP.format(a=a, b=b))
    with pytest.raises(SpecError) as err:
        build(spec, ["k8s"])
    text = str(err.value)
    assert f"zones.toml:{line}: error: services.{at}.labels: the labels of" in text
    assert text.count("error:") == 1


def test_distinct_selectors_and_other_namespaces_pass(tmp_path: Path) -> None:
    """Negative control: distinct labels pass, and equal labels in two tier namespaces too."""
    spec = tmp_path / "zones.toml"
    spec.write_text(OVERLAP.format(a='labels = { app = "shop", role = "a" }',
                                   b='labels = { app = "shop", role = "b" }'))
    build(spec, ["k8s"])
    text = OVERLAP.format(a='labels = { app = "shop" }', b='labels = { app = "shop" }')
    text = text.replace('[[tiers]]\nname = "t"\n', '[[tiers]]\nname = "t"\n[[tiers]]\nname = "u"\n')
    text = text.replace('listen = [81]', 'listen = [81]').replace(
        '[services.b]\ntier = "t"', '[services.b]\ntier = "u"')
    spec.write_text(text + "[kubernetes]\ntier_namespaces = true\n")
    build(spec, ["k8s"])


def test_mesh_needs_the_ingress_service_account(tmp_path: Path) -> None:
    """ingress_pod_labels under a mesh without ingress_service_account is an error (the mesh
    would let the whole namespace in); with it, only that identity is authorized."""
    spec = tmp_path / "zones.toml"
    spec.write_text(INGRESS_NS.read_text().replace('ingress_service_account = "ingress-nginx"\n',
                                                   "") + '\n[mesh]\nkind = "istio"\n')
    with pytest.raises(SpecError, match=r"zones\.toml:10: error: kubernetes\.ingress_pod_labels"):
        build(spec)
    for mesh in ("istio", "linkerd"):
        generate(variant(INGRESS_NS, tmp_path, mesh), tmp_path / mesh, ["k8s", "mesh"])
        text = (tmp_path / mesh / "k8s" / "mesh.yaml").read_text()
        assert "ingress-nginx" in text
        docs = docs_of(tmp_path / mesh / "k8s" / "mesh.yaml")
        flat = yaml.safe_dump_all(docs)
        assert "namespaces:" not in flat and "kind: Namespace" not in flat


# -- every listen port no flow names is denied under both meshes ----------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pods_of(workloads: Docs) -> dict[str, tuple[str, dict[str, str], dict[str, str], set[int]]]:
    """Deployment -> (namespace, pod labels, pod annotations, TCP containerPorts)."""
    out = {}
    for d in workloads:
        if d["kind"] != "Deployment":
            continue
        meta = d["spec"]["template"]["metadata"]
        ports = {p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", []) if p.get("protocol", "TCP") == "TCP"}
        out[d["metadata"]["name"]] = (d["metadata"]["namespace"], meta.get("labels", {}),
                                      meta.get("annotations", {}), ports)
    return out


def istio_open_ports(mesh: Docs, workloads: Docs, namespaces: Docs) -> dict[str, set[int]]:
    """Per Deployment, the TCP ports Istio lets anyone reach (Istio semantics, read from the
    YAML: sidecar injected by the namespace label; once any ALLOW policy applies to a
    workload, a request is allowed only when some ALLOW rule of a policy that applies to it
    matches; without any, everything is allowed)."""
    injected = {n["metadata"]["name"] for n in namespaces
                if n["metadata"].get("labels", {}).get("istio-injection") == "enabled"}
    out = {}
    for name, (ns, labels, _, ports) in pods_of(workloads).items():
        if ns not in injected:
            out[name] = ports
            continue
        policies = [p for p in mesh if p["kind"] == "AuthorizationPolicy"
                    and p["metadata"]["namespace"] == ns
                    and _selects((p["spec"].get("selector") or {}).get("matchLabels", {}),
                                 labels)]
        allow = [p for p in policies if p["spec"].get("action", "ALLOW") == "ALLOW"]
        if not allow:
            out[name] = ports
            continue
        reachable: set[int] = set()
        for p in allow:
            for rule in p["spec"].get("rules", []):
                ops = [op["operation"] for op in rule.get("to", [])]
                if not ops or any("ports" not in op for op in ops):
                    reachable |= ports  # a rule without a port condition opens every port
                else:
                    reachable |= {int(x) for op in ops for x in op["ports"]}
        out[name] = reachable & ports
    return out


def linkerd_open_ports(mesh: Docs, workloads: Docs, namespaces: Docs) -> dict[str, set[int]]:
    """Per Deployment, the TCP ports Linkerd does not deny to everyone (Linkerd semantics: a
    port with a Server follows that Server's authorizations (accessPolicy deny: only what an
    AuthorizationPolicy allows); a port without one follows the default inbound policy of
    the pod, else of the namespace, else Linkerd's cluster default all-unauthenticated)."""
    ns_meta = {n["metadata"]["name"]: n["metadata"] for n in namespaces}
    out = {}
    for name, (ns, labels, pod_ann, ports) in pods_of(workloads).items():
        ns_ann = ns_meta.get(ns, {}).get("annotations", {})
        injected = "enabled" in (pod_ann.get("linkerd.io/inject"),
                                 ns_ann.get("linkerd.io/inject"))
        default = (pod_ann.get(LINKERD_DENY) or ns_ann.get(LINKERD_DENY)
                   or "all-unauthenticated")
        if not injected:
            out[name] = ports
            continue
        open_ports = set()
        for port in ports:
            servers = [s for s in mesh if s["kind"] == "Server"
                       and s["metadata"]["namespace"] == ns and s["spec"]["port"] == port
                       and _selects(s["spec"]["podSelector"].get("matchLabels", {}), labels)]
            if not servers:
                if default != "deny":
                    open_ports.add(port)
                continue
            for server in servers:
                authorized = any(
                    a["kind"] == "AuthorizationPolicy" and a["metadata"]["namespace"] == ns
                    and a["spec"]["targetRef"].get("kind") == "Server"
                    and a["spec"]["targetRef"]["name"] == server["metadata"]["name"]
                    for a in mesh)
                if authorized or server["spec"].get("accessPolicy", "deny") != "deny":
                    open_ports.add(port)
        out[name] = open_ports
    return out


OPEN = {"istio": istio_open_ports, "linkerd": linkerd_open_ports}


def flow_ports(raw: dict[str, Any]) -> dict[str, set[int]]:
    """Per service, the TCP ports some flow reaches (the reference oracle)."""
    out: dict[str, set[int]] = {name: set() for name in raw["services"]}
    for _, dst, proto, port in reference.expected(raw).conns:
        if proto == "tcp" and dst in out:
            out[dst].add(port)
    return out


def mesh_files(spec: Path, mesh: str, tmp: Path) -> tuple[dict[str, Any], Docs, Docs, Docs]:
    """Generate k8s + mesh; the raw spec and the mesh, workloads and namespaces documents."""
    path = variant(spec, tmp, mesh)
    generate(path, tmp / "out", ["k8s", "mesh"])
    k8s = tmp / "out" / "k8s"
    return (tomllib.loads(path.read_text()), docs_of(k8s / "mesh.yaml"),
            docs_of(k8s / "workloads.yaml"), docs_of(k8s / "namespaces.yaml"))


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_listen_ports_without_a_flow_are_denied(spec: Path, mesh: str, tmp_path: Path) -> None:
    """Under each mesh, exactly the ports flows reach are open; every other listen port is
    declared (containerPort) and denied to everyone."""
    raw, docs, loads, namespaces = mesh_files(spec, mesh, tmp_path)
    opened = OPEN[mesh](docs, loads, namespaces)
    wanted = flow_ports(raw)
    assert opened == wanted
    for name, (_, _, _, ports) in pods_of(loads).items():
        listen = {port for item in raw["services"][name].get("listen", [])
                  for proto, port in reference.parse_ports(item) if proto == "tcp"}
        assert listen == ports


@pytest.mark.parametrize("mesh", ["istio", "linkerd"])
def test_denied_ports_negative_controls(mesh: str, tmp_path: Path) -> None:
    """An extra authorization, or a missing default-deny / Server, opens admin:8080."""
    raw, docs, loads, namespaces = mesh_files(EXAMPLE, mesh, tmp_path)
    assert 8080 not in OPEN[mesh](docs, loads, namespaces)["admin"]
    if mesh == "istio":
        extra = {"kind": "AuthorizationPolicy", "metadata": {"namespace": "shop", "name": "x"},
                 "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "admin"}},
                          "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]}}
        assert 8080 in OPEN[mesh]([*docs, extra], loads, namespaces)["admin"]
        no_injection = [{**n, "metadata": {"name": n["metadata"]["name"]}} for n in namespaces]
        assert 8080 in OPEN[mesh](docs, loads, no_injection)["admin"]
        return
    extra = {"kind": "AuthorizationPolicy", "metadata": {"namespace": "shop", "name": "x"},
             "spec": {"targetRef": {"group": "policy.linkerd.io", "kind": "Server",
                                    "name": "admin-8080"}}}
    assert 8080 in OPEN[mesh]([*docs, extra], loads, namespaces)["admin"]
    no_server = [d for d in docs if d["metadata"]["name"] != "admin-8080"]
    assert 8080 not in OPEN[mesh](no_server, loads, namespaces)["admin"]  # default deny holds
    for d in loads:
        d.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {}).pop(
            LINKERD_DENY, None)
    plain = [{**n, "metadata": {**n["metadata"], "annotations": {"linkerd.io/inject":
                                                                 "enabled"}}}
             for n in namespaces]
    assert 8080 in OPEN[mesh](no_server, loads, plain)["admin"]


# -- passthrough values on Kubernetes -------------------------------------------------------


def k8s_expand(text: str) -> str:
    """What a Kubernetes env value or argument means when no variable is referenced:
    `$$` is one `$` (the kubelet's expansion rule)."""
    return text.replace("$$", "$")


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_passthrough_values_reach_the_deployment_unchanged(payload: str, tmp_path: Path) -> None:
    """Hostile strings as a command word, an env value and a tls_env literal read back from
    workloads.yaml as the same strings compose means; interpolated values are left out."""
    value = PAYLOADS[payload]
    data = tomllib.loads(EXAMPLE.read_text())
    data["services"]["web"]["compose"] = {"command": [value, "--flag"]}
    app = data["services"]["app"]
    app.setdefault("compose", {}).setdefault("environment", {})["DB_HOST"] = value
    literal = not CONTROL.search(value) and len(value) <= 500
    if literal:
        app.setdefault("tls_env", {})["DB_SSL"] = "=" + value
    spec = tmp_path / "zones.toml"
    spec.write_text(dump_toml(data))
    generate(spec, tmp_path, ["k8s"])
    docs = {d["metadata"]["name"]: d for d in docs_of(tmp_path / "k8s" / "workloads.yaml")
            if d["kind"] == "Deployment"}
    web = docs["web"]["spec"]["template"]["spec"]["containers"][0]
    app = docs["app"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in app["env"]}
    interpolated = "$" in value.replace("$$", "")
    if interpolated:
        assert "args" not in web and "DB_HOST" not in env
    else:
        assert [k8s_expand(a) for a in web["args"]] == [value.replace("$$", "$"), "--flag"]
        assert k8s_expand(env["DB_HOST"]) == value.replace("$$", "$")
    if literal:
        assert k8s_expand(env["DB_SSL"]) == value  # a literal means what it says


def test_wide_listen_ranges_declare_no_ports(tmp_path: Path) -> None:
    """A service on 1-65535 still generates (validate warns): no containerPorts, no Service;
    a narrow one keeps both (negative control)."""
    spec = tmp_path / "zones.toml"
    spec.write_text(OVERLAP.format(a="", b="").replace("listen = [81]",
                                                       'listen = ["1-65535/tcp"]'))
    loaded, _, _ = build(spec, ["k8s"])
    generate(spec, tmp_path, ["k8s"])
    docs = docs_of(tmp_path / "k8s" / "workloads.yaml")
    b = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "b")
    assert "ports" not in b["spec"]["template"]["spec"]["containers"][0]
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert services == {"a"}
    assert any("more than 1024 listen ports" in str(w) for w in loaded.warnings)
