"""The k8s target: valid manifests, and network-config-analyzer sees exactly the spec's flows."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from castle.errors import SpecError
from castle.io.write import write_outputs
from castle.readers.k8s import compare_k8s, policy_names
from castle.targets.generate import build
from tests import strategies
from tests.oracles import crd, kube, reference

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "tests" / "data" / "specs"
EXAMPLE = REPO / "zones.example.toml"
CORPUS = [EXAMPLE, *sorted(SPECS.glob("*.toml"))]
VERSIONS = ("1.28", "1.37")
# "internet" egress is public addresses only: private and link-local ranges, and always the
# cloud metadata address, are excepted (docs/firewall-semantics.md).
NOT_INTERNET = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]
METADATA = "169.254.169.254/32"
CONTROLLER = "controller"
STRANGER = "elsewhere/stranger"


def need(reason: str | None) -> None:
    """Skip, saying why, when an oracle's tool is missing."""
    if reason:
        pytest.skip(reason)


def generate(spec: Path, out: Path, targets: tuple[str, ...] = ("k8s",)) -> Any:
    """Write the k8s files of `spec` into `out`; return the plan."""
    _, plan, outputs = build(spec, list(targets))
    write_outputs(out, outputs)
    return plan


# -- the clean-room view of a spec: pods, namespaces, expected connectivity ----------------


def namespaces_of(raw: dict[str, Any]) -> dict[str, str]:
    """service -> namespace, as the README documents it (not from castle's code)."""
    k = raw.get("kubernetes", {})
    base = k.get("namespace") or raw["stack"]["name"]
    return {name: f"{base}-{svc['tier']}" if k.get("tier_namespaces") else base
            for name, svc in raw.get("services", {}).items()}


def cluster(raw: dict[str, Any]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """Pods (ns/name -> labels) and namespaces: the stack, kube-dns, a controller, a stranger."""
    k = raw.get("kubernetes", {})
    ns_of = namespaces_of(raw)
    pods = {f"{ns_of[n]}/{n}": dict(s.get("labels") or {"app.kubernetes.io/name": n})
            for n, s in raw.get("services", {}).items()}
    dns_ns = k.get("dns_namespace", "kube-system")
    pods[f"{dns_ns}/kube-dns"] = dict(k.get("dns_pod_labels", {"k8s-app": "kube-dns"}))
    pods[STRANGER] = {"app.kubernetes.io/name": "stranger"}
    if k.get("ingress_namespace"):
        pods[f"{k['ingress_namespace']}/{CONTROLLER}"] = dict(k.get("ingress_pod_labels", {}))
        if k.get("ingress_pod_labels"):  # else the whole namespace is meant to get in
            pods[f"{k['ingress_namespace']}/bystander"] = {"app.kubernetes.io/name": "by"}
    return pods, {ns: {} for ns in {p.split("/")[0] for p in pods}}


def expected(raw: dict[str, Any]) -> kube.Connectivity:
    """What the policies must allow, from the reference oracle (pods renamed to one ns)."""
    k = raw.get("kubernetes", {})
    exp = reference.expected(raw)
    services = sorted(exp.services)
    ingress_ns = k.get("ingress_namespace")
    via_controller = [c for c in exp.ingress_conns if c[0] == "internet" and ingress_ns]
    inward = [c for c in exp.conns if c not in exp.egress_conns and c not in via_controller]
    dns_pod = f"{k.get('dns_namespace', 'kube-system')}/kube-dns"
    got = kube.expected_connectivity(inward, services, kube.ip_ranges(["0.0.0.0/0"]),
                                     dns_pod=dns_pod)
    excepts = [*k.get("egress_except", NOT_INTERNET), METADATA]
    out = kube.expected_connectivity(sorted(exp.egress_conns), services,
                                     kube.ip_ranges(["0.0.0.0/0"], excepts), dns=())
    got.ip.update(out.ip)
    for _, dst, proto, port in via_controller:
        key = (f"{ingress_ns}/{CONTROLLER}", dst, proto)
        got.foreign[key] = kube._merge((*got.foreign.get(key, ()), (port, port)))
    return got


def observed(raw: dict[str, Any], policy_files: list[Path]) -> kube.Connectivity:
    """nca's connectivity of the policies, stack pods renamed into one namespace."""
    pods, namespaces = cluster(raw)
    tuples = kube.nca_connectivity(policy_files, pods, namespaces)
    ns_of = namespaces_of(raw)
    stack_ns = set(ns_of.values())

    def rename(ep: str) -> str:
        ns, _, name = ep.partition("/")
        return f"stack/{name}" if name and ns in stack_ns else ep

    return kube.normalize({(rename(s), rename(d), p, port) for s, d, p, port in tuples}, "stack")


def check_with_nca(spec_text: str, out: Path) -> None:
    """Generate, then assert nca's connectivity equals the reference expectation."""
    raw = tomllib.loads(spec_text)
    spec = out / "zones.toml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(spec_text)
    generate(spec, out)
    got = observed(raw, [out / "k8s" / "networkpolicies.yaml"])
    want = expected(raw)
    assert got.lines() == want.lines()
    assert got == want


# -- validity ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_manifests_pass_kubernetes_validate(spec: Path, tmp_path: Path) -> None:
    """networkpolicies.yaml passes kubernetes-validate --strict for 1.28 and the newest."""
    need(kube.validate_skip_reason())
    generate(spec, tmp_path)
    for version in VERSIONS:
        ok, log = kube.validate([tmp_path / "k8s" / "networkpolicies.yaml"], version)
        assert ok, log


def test_kubernetes_validate_negative_control(tmp_path: Path) -> None:
    """A policy with a misspelt field fails the same check."""
    need(kube.validate_skip_reason())
    generate(EXAMPLE, tmp_path)
    path = tmp_path / "k8s" / "networkpolicies.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("endPort", "endport").replace("policyTypes",
                                                                             "policyType"))
    assert not kube.validate([bad], VERSIONS[0])[0]


@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_kustomization_matches_schema_and_lists_files(spec: Path, tmp_path: Path) -> None:
    """The kustomization validates against its schema and names files that exist."""
    need(crd.skip_reason())
    generate(spec, tmp_path)
    text = (tmp_path / "k8s" / "kustomization.yaml").read_text()
    assert text.startswith("# Generated by castle")
    doc = yaml.safe_load(text)
    assert crd.validate(doc) == []
    assert doc["resources"] == ["namespaces.yaml", "workloads.yaml", "networkpolicies.yaml"]
    for r in doc["resources"]:
        assert (tmp_path / "k8s" / r).is_file()
    assert crd.validate({**doc, "resourcez": []}) != []  # negative control


def _dummy_tls(plan: Any, out: Path) -> list[str]:
    """Create the TLS files the kustomization reads; return the secret names expected."""
    from castle.tls import recipes  # certificates, keys and generated passwords

    files = recipes.secret_files(plan)
    folder = out / plan.spec.tls.dir
    folder.mkdir(parents=True, exist_ok=True)
    for name in files.values():
        (folder / name).write_text(f"dummy {name}\n")
    return sorted(files)


@pytest.mark.parametrize("spec", [EXAMPLE, SPECS / "k8s-tier-ns.toml",
                                  SPECS / "k8s-ingress-ns.toml"], ids=lambda p: p.stem)
def test_kustomize_builds_with_tls_files(spec: Path, tmp_path: Path) -> None:
    """`kubectl kustomize OUT/k8s` builds (default load restrictor) with Secrets per pair."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    plan = generate(spec, tmp_path)
    _dummy_tls(plan, tmp_path)
    proc = subprocess.run(["kubectl", "kustomize", str(tmp_path / "k8s")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs
               if d["kind"] == "Secret"}
    raw = tomllib.loads(spec.read_text())
    ns_of = namespaces_of(raw)
    for client, server in sorted(reference.expected(raw).tls):
        srv = secrets[(ns_of[server], f"{server}-server-tls")]
        assert srv["type"] == "kubernetes.io/tls" and set(srv["data"]) == {"tls.crt", "tls.key"}
        cli = secrets[(ns_of[client], f"{client}-client-tls")]
        assert cli["type"] == "kubernetes.io/tls"
        for ns in (ns_of[client], ns_of[server]):
            assert set(secrets[(ns, "castle-ca")]["data"]) == {"ca.crt"}
    assert all(d["metadata"]["namespace"] in set(ns_of.values()) for d in docs
               if d["kind"] != "Namespace")
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"} == set(
        ns_of.values())
    text = (tmp_path / "k8s" / "kustomization.yaml").read_text()
    assert "BEGIN" not in text and "PRIVATE KEY" not in text
    for doc in docs:  # the built Secrets and policies are valid Kubernetes objects too
        if doc["kind"] == "Secret":
            path = tmp_path / "secret.yaml"
            path.write_text(yaml.safe_dump(doc))
            if kube.validate_skip_reason() is None:
                assert kube.validate([path])[0]


def test_tls_dir_outside_k8s_is_flagged(tmp_path: Path) -> None:
    """A [tls] dir outside k8s/ says how to build it; kustomize refuses it by default."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    spec = tmp_path / "zones.toml"
    spec.write_text(EXAMPLE.read_text() + '\n[tls]\ndir = "certs"\n')
    plan = generate(spec, tmp_path)
    _dummy_tls(plan, tmp_path)
    text = (tmp_path / "k8s" / "kustomization.yaml").read_text()
    assert "LoadRestrictionsNone" in text and "../certs/ca.crt" in text
    k8s = str(tmp_path / "k8s")
    assert subprocess.run(["kubectl", "kustomize", k8s], capture_output=True).returncode != 0
    assert subprocess.run(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone",
                           k8s], capture_output=True).returncode == 0


def test_output_is_deterministic_and_headed(tmp_path: Path) -> None:
    """Same spec, same bytes; every file starts with castle's header."""
    _, _, first = build(EXAMPLE, ["k8s"])
    _, _, second = build(EXAMPLE, ["k8s"])
    assert first == second
    assert {o.path for o in first} == {"k8s/networkpolicies.yaml", "k8s/kustomization.yaml",
                                       "k8s/namespaces.yaml", "k8s/workloads.yaml"}
    assert all(o.content.startswith("# Generated by castle from") for o in first)


def test_tier_namespaces_use_and_not_or(tmp_path: Path) -> None:
    """Every pod peer in another namespace has both selectors in one list entry."""
    generate(SPECS / "k8s-tier-ns.toml", tmp_path)
    docs = list(yaml.safe_load_all((tmp_path / "k8s" / "networkpolicies.yaml").read_text()))
    seen = 0
    for doc in docs:
        for key, side in (("ingress", "from"), ("egress", "to")):
            for rule in doc["spec"].get(key, []):
                for peer in rule[side]:
                    if "ipBlock" in peer:
                        continue
                    assert set(peer) == {"namespaceSelector", "podSelector"}, peer
                    seen += 1
    assert seen >= 8
    assert {d["metadata"]["namespace"] for d in docs} == {"bank-dmz", "bank-apps", "bank-vault"}


def test_long_tier_namespace_is_refused(tmp_path: Path) -> None:
    """A tier namespace over 63 characters is a spec error with its line, not a manifest."""
    spec = tmp_path / "zones.toml"
    text = (SPECS / "k8s-tier-ns.toml").read_text().replace('name = "bank"', f'name = "{"b" * 60}"')
    spec.write_text(text)
    with pytest.raises(SpecError, match=r"zones\.toml:\d+: error: kubernetes.tier_namespaces"):
        build(spec, ["k8s"])


def test_annotations_carry_descriptions_and_waivers(tmp_path: Path) -> None:
    """Descriptions and waivers reach the policies as annotations, read back verbatim."""
    generate(SPECS / "k8s-tier-ns.toml", tmp_path)
    docs = {d["metadata"]["name"]: d for d in
            yaml.safe_load_all((tmp_path / "k8s" / "networkpolicies.yaml").read_text())}
    waiver = "read-only health probe of the ledger, approved by security"
    assert docs["ledger-ingress"]["metadata"]["annotations"]["castle/waiver-4"] == waiver
    spec = tmp_path / "odd.toml"
    odd = 'x: "quoted" # not a comment\\n {braces} \'single\' é'
    spec.write_text(EXAMPLE.read_text().replace("the shop's public front door",
                                                odd.replace("\\", "\\\\").replace('"', '\\"')))
    generate(spec, tmp_path / "odd")
    docs = {d["metadata"]["name"]: d for d in
            yaml.safe_load_all((tmp_path / "odd" / "k8s" / "networkpolicies.yaml").read_text())}
    assert docs["web-ingress"]["metadata"]["annotations"]["castle/flow-0"] == odd


# -- network-config-analyzer ------------------------------------------------------------


@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_nca_sees_exactly_the_spec(spec: Path, tmp_path: Path) -> None:
    """Pod-to-pod, DNS, internet ingress and egress: exactly the reference's, nothing else."""
    need(kube.nca_skip_reason())
    check_with_nca(spec.read_text(), tmp_path)


def _loosen(path: Path, extra: dict[str, tuple[str, dict[str, Any]]]) -> None:
    """Append one rule to named policies: name -> (ingress|egress, rule)."""
    docs = list(yaml.safe_load_all(path.read_text()))
    for d in docs:
        if d and d["metadata"]["name"] in extra:
            key, rule = extra[d["metadata"]["name"]]
            d["spec"].setdefault(key, []).append(rule)
    path.write_text(yaml.safe_dump_all(docs))


def test_nca_negative_control_extra_ingress_is_a_leak(tmp_path: Path) -> None:
    """Extra `podSelector: {}` rules are seen by nca AND by compare_k8s, exactly when they leak."""
    need(kube.nca_skip_reason())
    raw = tomllib.loads(EXAMPLE.read_text())
    plan = generate(EXAMPLE, tmp_path)
    path = tmp_path / "k8s" / "networkpolicies.yaml"
    anyone: dict[str, Any] = {"from": [{"podSelector": {}}]}
    # db accepts any pod of the namespace, but web's egress still stops web: no leak yet.
    _loosen(path, {"db-ingress": ("ingress", anyone)})
    assert observed(raw, [path]) == expected(raw)
    assert compare_k8s(plan, tmp_path) == ({}, [])
    # ... until web's egress opens too: now both oracles see web -> db.
    _loosen(path, {"web-egress": ("egress", {"to": [{"podSelector": {}}]})})
    got, want = observed(raw, [path]), expected(raw)
    assert got != want
    assert ("web", "db", "tcp") in got.pods and ("web", "db", "tcp") not in want.pods
    marks, notes = compare_k8s(plan, tmp_path)
    assert marks[("web", "db")] == "LOOSER(k8s)"
    assert any("web -> db" in n for n in notes)


def test_nca_negative_control_other_namespaces(tmp_path: Path) -> None:
    """`namespaceSelector: {}` lets pods of any namespace in: nca and compare_k8s both say so."""
    need(kube.nca_skip_reason())
    raw = tomllib.loads(EXAMPLE.read_text())
    plan = generate(EXAMPLE, tmp_path)
    path = tmp_path / "k8s" / "networkpolicies.yaml"
    _loosen(path, {"db-ingress": ("ingress", {"from": [{"namespaceSelector": {}}]})})
    got = observed(raw, [path])
    assert (STRANGER, "db", "tcp") in got.foreign and got != expected(raw)
    marks, _ = compare_k8s(plan, tmp_path)
    assert marks[("internet", "db")] == "LOOSER(k8s)"


def test_nca_negative_control_or_trap_leaks(tmp_path: Path) -> None:
    """Splitting the ingress-controller peer into two entries (OR) lets any pod of that
    namespace in: nca and compare_k8s both report it."""
    need(kube.nca_skip_reason())
    spec = SPECS / "k8s-ingress-ns.toml"
    raw = tomllib.loads(spec.read_text())
    plan = generate(spec, tmp_path)
    path = tmp_path / "k8s" / "networkpolicies.yaml"
    text = path.read_text()
    joined = '"ingress-nginx"\n          podSelector:'
    assert joined in text
    path.write_text(text.replace(joined, '"ingress-nginx"\n        - podSelector:'))
    got = observed(raw, [path])
    assert ("ingress-nginx/bystander", "www", "tcp") in got.foreign and got != expected(raw)
    marks, _ = compare_k8s(plan, tmp_path)
    assert marks[("internet", "www")] == "LOOSER(k8s)"


# -- compare_k8s and policy_names ---------------------------------------------------------


@pytest.mark.parametrize("spec", CORPUS, ids=lambda p: p.stem)
def test_compare_k8s_agrees_on_generated_files(spec: Path, tmp_path: Path) -> None:
    """castle's own read-back finds no difference in what castle wrote."""
    plan = generate(spec, tmp_path)
    assert compare_k8s(plan, tmp_path) == ({}, [])


def test_compare_k8s_marks_stricter_and_missing(tmp_path: Path) -> None:
    """A dropped rule is STRICTER; a missing file is a note; wider egress is LOOSER."""
    plan = generate(EXAMPLE, tmp_path)
    path = tmp_path / "k8s" / "networkpolicies.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    original = yaml.safe_dump_all(docs)
    for d in docs:
        if d["metadata"]["name"] == "db-ingress":
            d["spec"]["ingress"] = []
        if d["metadata"]["name"] == "web-egress":
            d["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]})
    path.write_text(yaml.safe_dump_all(docs))
    marks, notes = compare_k8s(plan, tmp_path)
    assert marks[("app", "db")] == "STRICTER(k8s)"
    assert marks[("web", "internet")] == "LOOSER(k8s)"
    path.write_text(original)
    assert compare_k8s(plan, tmp_path) == ({}, [])
    path.unlink()
    marks, notes = compare_k8s(plan, tmp_path)
    assert marks == {} and "not found" in notes[0]


def test_policy_names() -> None:
    """The policies that carry a pair, namespace-qualified; none for a pair no flow joins."""
    _, plan, _ = build(EXAMPLE, ["k8s"])
    assert policy_names(plan, "app", "db") == ["shop/app-egress", "shop/db-ingress"]
    assert policy_names(plan, "internet", "web") == ["shop/web-ingress"]
    assert policy_names(plan, "web", "db") == []
    _, plan, _ = build(SPECS / "k8s-tier-ns.toml", ["k8s"])
    assert policy_names(plan, "proxy", "teller") == ["bank-dmz/proxy-egress",
                                                     "bank-apps/teller-ingress"]


# -- random specs --------------------------------------------------------------------------

@st.composite
def k8s_specs(draw: st.DrawFn) -> str:
    """A random valid spec (tests/strategies.py) with random [kubernetes] options on top."""
    _, data = draw(strategies.specs(max_services=5, max_flows=6))
    k8s: dict[str, Any] = {}
    longest = max(len(t["name"]) for t in data["tiers"])
    if len(data["stack"]["name"]) + 1 + longest <= 63 and draw(st.booleans()):
        k8s["tier_namespaces"] = True
    ingress = draw(st.sampled_from(["", "edge", "edge-labels"]))
    if ingress:  # outside the stack's own namespaces (castle refuses those)
        stack = data["stack"]["name"]
        own = {stack} | {f"{stack}-{t['name']}" for t in data["tiers"]}
        k8s["ingress_namespace"] = next(n for n in ("edge", "edge-ctl", "ingress-ctl-x")
                                        if n not in own)
    if ingress == "edge-labels":
        k8s["ingress_pod_labels"] = {"role": "lb"}
    if draw(st.booleans()):
        k8s["egress_except"] = draw(st.sampled_from([[], ["10.0.0.0/8"], ["100.64.0.0/10"]]))
    if k8s:
        data = {**data, "kubernetes": k8s}
    return strategies.dump_toml(data)


@seed(20240601)
@settings(max_examples=15, deadline=None, derandomize=True, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=k8s_specs())
def test_random_specs_with_nca(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Random specs: nca equals the reference, and compare_k8s finds nothing."""
    need(kube.nca_skip_reason())
    out = tmp_path_factory.mktemp("rnd")
    check_with_nca(text, out)
    _, plan, _ = build(out / "zones.toml", ["k8s"])
    assert compare_k8s(plan, out) == ({}, [])
