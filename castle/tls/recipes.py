"""Per-service TLS wiring, computed once for every target: which server recipe a service
runs, the files it mounts and where, the command flags, config files, environment and who
must be able to read its private files.

compose.yaml (castle/targets/compose.py) is one consumer; a second target (Kubernetes
Deployments) reads `service_tls(plan, name)` and mounts the same files at the same paths.
docs/tls.md describes each recipe.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from castle.io.render import render, shell_quote
from castle.io.write import Output, header
from castle.plan import Plan
from castle.spec.model import Recipe, spec_recipe
from castle.tls import plan as tlsplan

SECRETS_DIR = "/run/secrets"
# compose bind-mounts a file secret with its host owner and mode; a private file that the
# server's own user must read is mounted here and copied into SECRETS_DIR at start
STAGING_DIR = "/run/castle-secrets"
CONFIG_DIR = "/etc/castle"
OUT_DIR = "tls"  # recipe files castle generate writes, relative to the output folder
PASSWORD_SUFFIX = "-postgres-password"


class Owner(NamedTuple):
    """Who runs the server inside the official image: its private files are root:group 0640."""

    user: str
    group: str
    uid: int
    gid: int


# the official images' server users, which start as root and drop to them (Debian variants;
# alpine's postgres is uid 70, which is why the entrypoint resolves the group by name)
OWNERS: dict[str, Owner] = {
    "postgres": Owner("postgres", "postgres", 999, 999),
    "mysql": Owner("mysql", "mysql", 999, 999),
    "mariadb": Owner("mysql", "mysql", 999, 999),
    "redis": Owner("redis", "redis", 999, 999),
    "valkey": Owner("valkey", "valkey", 999, 999),
}
ENTRYPOINTS = {name: "docker-entrypoint.sh" for name in OWNERS}
PRIVATE_MODE = 0o640  # with owner root: what PostgreSQL, libpq and MySQL accept


class SecretMount(NamedTuple):
    """A top-level secret mounted at an absolute path inside the container."""

    source: str
    target: str


class ConfigFile(NamedTuple):
    """A file castle generate writes (tls/...) and the service mounts read-only."""

    name: str  # top-level compose config name
    out: str  # path relative to the output folder
    target: str  # absolute path inside the container
    text: str


class ServiceTls(NamedTuple):
    """Everything TLS adds to one service, for any target."""

    service: str
    server: Recipe | None  # its server recipe when a tls flow reaches it
    clients: dict[str, Recipe]  # tls destination -> that destination's server recipe
    secrets: tuple[SecretMount, ...]  # where each secret is mounted
    private: tuple[str, ...]  # paths (in SECRETS_DIR) that hold keys and passwords
    configs: tuple[ConfigFile, ...]
    env: dict[str, str]
    command: tuple[str, ...] | None
    entrypoint: tuple[str, ...] | None  # compose only: copies private files first
    owner: Owner | None  # must read the private files (None: root reads them)
    client_args: dict[str, tuple[str, ...]]  # dest -> CLI flags

    @property
    def staged(self) -> dict[str, str]:
        """Private file path -> where compose mounts it before the entrypoint copies it."""
        if self.owner is None:
            return {}
        return {p: f"{STAGING_DIR}/{p.rsplit('/', 1)[1]}" for p in self.private}


def recipe_of(plan: Plan, service: str) -> Recipe:
    """The recipe a service runs: `[services.X.tls] recipe`, or the one its image implies."""
    spec = plan.service(service).spec
    return spec_recipe(spec)


def _user_env(plan: Plan, service: str) -> set[str]:
    spec = plan.service(service).spec
    env = spec.compose.get("environment")
    names = set(spec.tls_env)
    if isinstance(env, dict):
        names |= set(env)
    elif isinstance(env, list):
        names |= {str(x).split("=", 1)[0] for x in env}
    return names


def _ports(plan: Plan, client: str | None, server: str) -> list[int]:
    """The TCP ports tls flows open on `server` (from `client`, or from any source)."""
    ports: set[int] = set()
    for c in plan.internal_conns:
        if c.tls and c.dst == server and c.proto == "tcp" and client in (None, c.src):
            ports.update(range(c.lo, min(c.hi, c.lo + 63) + 1))
    return sorted(ports)


def password_secret(service: str) -> str:
    """Name of the generated superuser password secret of a postgres server."""
    return f"{service}{PASSWORD_SUFFIX}"


def needs_password(plan: Plan, service: str) -> bool:
    """True when castle must make the postgres superuser password (the user set none)."""
    return (recipe_of(plan, service) == "postgres" and service in _servers(plan)
            and not _user_env(plan, service) & {"POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE",
                                                "POSTGRES_HOST_AUTH_METHOD"})


def _servers(plan: Plan) -> set[str]:
    return {s for _, s in plan.tls_pairs}


def generated_secrets(plan: Plan) -> dict[str, str]:
    """Random secrets castle makes beside the certificates: secret name -> file name."""
    return {password_secret(s): f"{password_secret(s)}.secret"
            for s in sorted(_servers(plan)) if needs_password(plan, s)}


def secret_files(plan: Plan) -> dict[str, str]:
    """Every top-level secret compose defines: certificates, keys and generated secrets."""
    return dict(sorted((tlsplan.secret_files(plan) | generated_secrets(plan)).items()))


def _subject(plan: Plan, service: str) -> str:
    """A leaf's subject as OpenSSL's one-line form (what MySQL's REQUIRE SUBJECT compares)."""
    return f"/O=castle/OU={plan.stack}/CN={service}"


def _sql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _ident(value: str, quote: str) -> str:
    return quote + value.replace(quote, quote * 2) + quote


def _cfg(service: str, what: str, target: str, template: str, plan: Plan, prefix: str = "#",
         filename: str | None = None, **context: object) -> ConfigFile:
    head = header(plan.source_name, plan.sha256, prefix)
    text = render(f"tls/{template}", header=head, service=service, **context)
    out = f"{OUT_DIR}/{service}/{filename or template.removesuffix('.j2')}"
    return ConfigFile(f"castle-{service}-{what}", out, target, text)


def _server(plan: Plan, service: str, recipe: Recipe, user: set[str]) -> tuple[
        dict[str, str], tuple[str, ...] | None, list[ConfigFile], list[str]]:
    """Environment, command, config files and private paths of a server recipe."""
    cert = f"{SECRETS_DIR}/{service}-server-cert"
    key = f"{SECRETS_DIR}/{service}-server-key"
    ca = f"{SECRETS_DIR}/{tlsplan.CA_SECRET}"
    clients = tlsplan.allowed_clients(plan, service)
    env: dict[str, str] = {}
    private = [key]
    configs: list[ConfigFile] = []
    command: tuple[str, ...] | None = None
    if recipe == "postgres":
        hba = f"{CONFIG_DIR}/pg_hba.conf"
        configs.append(_cfg(service, "pg-hba", hba, "pg_hba.conf.j2", plan, clients=clients))
        configs.append(_cfg(service, "pg-roles", "/docker-entrypoint-initdb.d/castle-roles.sql",
                            "castle-roles.sql.j2", plan, "--", roles=[
                                (_sql_str(c), _ident(c, '"')) for c in clients]))
        command = ("postgres", "-c", "ssl=on", "-c", f"ssl_cert_file={cert}",
                   "-c", f"ssl_key_file={key}", "-c", f"ssl_ca_file={ca}",
                   "-c", f"hba_file={hba}", "-c", "ssl_min_protocol_version=TLSv1.2")
        if needs_password(plan, service):
            password = f"{SECRETS_DIR}/{password_secret(service)}"
            env["POSTGRES_PASSWORD_FILE"] = password
            private.append(password)
    elif recipe in ("mysql", "mariadb"):
        pre = "MARIADB" if recipe == "mariadb" else "MYSQL"
        configs.append(_cfg(service, "mysql-users", "/docker-entrypoint-initdb.d/castle-tls.sql",
                            "castle-tls.sql.j2", plan, "--", users=[
                                (_sql_str(c), _sql_str(_subject(plan, c)), _ident(c, "`"))
                                for c in clients],
                            issuer=_sql_str(f"/O=castle/CN=castle CA {plan.stack}")))
        command = (f"--ssl-cert={cert}", f"--ssl-key={key}", f"--ssl-ca={ca}",
                   "--require-secure-transport=ON")
        root_vars = {f"{p}_{v}" for p in (pre, "MYSQL") for v in (
            "ROOT_PASSWORD", "ROOT_PASSWORD_FILE", "ROOT_PASSWORD_HASH", "RANDOM_ROOT_PASSWORD",
            "ALLOW_EMPTY_PASSWORD", "ALLOW_EMPTY_ROOT_PASSWORD")}
        if not user & root_vars:
            env[f"{pre}_RANDOM_ROOT_PASSWORD"] = "yes"
        if not user & {f"{pre}_ROOT_HOST", "MYSQL_ROOT_HOST"}:
            env[f"{pre}_ROOT_HOST"] = "localhost"
    elif recipe in ("redis", "valkey"):
        port = (_ports(plan, None, service) or [6379])[0]
        command = (f"{recipe}-server", "--port", "0", "--tls-port", str(port),
                   "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
                   "--tls-auth-clients", "yes")
    elif recipe == "nginx":
        configs.append(_cfg(service, "nginx", f"/etc/nginx/conf.d/castle-tls-{service}.conf",
                            "nginx.conf.j2", plan, ports=_ports(plan, None, service),
                            names=tlsplan.dns_names(plan, service), cert=cert, key=key, ca=ca,
                            var=f"$castle_peer_{service.replace('-', '_')}",
                            allowed=[re.escape(c) for c in clients]))
    else:
        env = {k: tlsplan.resolve(service, v) for k, v in {
            "TLS_CERT_FILE": "server_cert", "TLS_KEY_FILE": "server_key",
            "TLS_CA_FILE": "ca"}.items()}
    return env, command, configs, private


def _client(plan: Plan, client: str, server: str, recipe: Recipe, first: bool) -> tuple[
        dict[str, str], list[ConfigFile], tuple[str, ...]]:
    """Environment, config files and CLI flags of `client` talking to `server`."""
    cert = f"{SECRETS_DIR}/{server}-client-cert"
    key = f"{SECRETS_DIR}/{server}-client-key"
    ca = f"{SECRETS_DIR}/{tlsplan.CA_SECRET}"
    port = (_ports(plan, client, server) or [0])[0]
    name = server.upper().replace("-", "_")
    env = {f"{name}_TLS_CERT_FILE": cert, f"{name}_TLS_KEY_FILE": key, f"{name}_TLS_CA_FILE": ca}
    configs: list[ConfigFile] = []
    args: tuple[str, ...] = ()
    if recipe == "postgres":
        args = (f"host={server} port={port} user={client} dbname={client} sslmode=verify-full "
                f"sslcert={cert} sslkey={key} sslrootcert={ca}",)
        if first:
            env |= {"PGHOST": server, "PGPORT": str(port), "PGUSER": client,
                    "PGDATABASE": client, "PGSSLMODE": "verify-full", "PGSSLCERT": cert,
                    "PGSSLKEY": key, "PGSSLROOTCERT": ca}
    elif recipe in ("mysql", "mariadb"):
        target = f"/etc/mysql/conf.d/castle-{server}.cnf"
        configs.append(_cfg(client, f"{server}-cnf", target, "client.cnf.j2", plan,
                            filename=f"{server}.cnf", server=server, port=port, user=client,
                            cert=cert, key=key, ca=ca))
        args = (f"--defaults-extra-file={target}",)
        if first:
            env |= {"MYSQL_HOST": server, "MYSQL_TCP_PORT": str(port)}
    elif recipe in ("redis", "valkey"):
        args = ("--tls", "-h", server, "-p", str(port), "--cacert", ca, "--cert", cert,
                "--key", key)
        if first:
            env["REDIS_URL"] = f"rediss://{server}:{port}"
    elif recipe == "nginx":
        args = ("--cacert", ca, "--cert", cert, "--key", key, f"https://{server}:{port}/")
        env[f"{name}_URL"] = f"https://{server}:{port}/"
    return env, configs, args


def service_tls(plan: Plan, service: str) -> ServiceTls | None:
    """The TLS wiring of one service, or None when it is in no tls flow (computed once per
    plan: compose, the Kubernetes workloads and the recipe files all read it)."""
    known: dict[str, ServiceTls | None] = plan.memo.setdefault("service_tls", {})
    if service not in known:
        ends = plan.memo.get("tls_ends")
        if ends is None:
            ends = plan.memo["tls_ends"] = {s for pair in plan.tls_pairs for s in pair}
        known[service] = _service_tls(plan, service) if service in ends else None
    return known[service]


def _service_tls(plan: Plan, service: str) -> ServiceTls:
    pairs = plan.tls_pairs
    user = _user_env(plan, service)
    server: Recipe | None = recipe_of(plan, service) if service in _servers(plan) else None
    secrets = {SecretMount(m.source, f"{SECRETS_DIR}/{m.target}")
               for m in tlsplan.mounts(plan, service)}
    env: dict[str, str] = {}
    configs: list[ConfigFile] = []
    private: list[str] = []
    command = None
    if server is not None:
        env, command, configs, private = _server(plan, service, server, user)
        if needs_password(plan, service):
            secrets.add(SecretMount(password_secret(service),
                                    f"{SECRETS_DIR}/{password_secret(service)}"))
    clients: dict[str, Recipe] = {}
    args: dict[str, tuple[str, ...]] = {}
    seen: set[Recipe] = set()
    for dest in sorted(s for c, s in pairs if c == service):
        recipe = recipe_of(plan, dest)
        family: Recipe = "mysql" if recipe == "mariadb" else "redis" if recipe == "valkey" \
            else recipe
        extra, files, args[dest] = _client(plan, service, dest, recipe, family not in seen)
        seen.add(family)
        clients[dest] = recipe
        env |= extra
        configs += files
        private.append(f"{SECRETS_DIR}/{dest}-client-key")
    spec = plan.service(service).spec
    # variables the user sets win; tls_env's names replace castle's generic ones
    generic = set(tlsplan.default_env(plan, service)) if spec.tls_env else set()
    env = {k: v for k, v in env.items() if k not in user and k not in generic}
    env |= {k: ref[1:] if ref.startswith("=") else tlsplan.resolve(service, ref)
            for k, ref in spec.tls_env.items()}
    owner = OWNERS.get(server) if server is not None else None
    entrypoint = None
    if owner is not None:
        configs.append(_cfg(service, "entrypoint", f"{CONFIG_DIR}/entrypoint.sh",
                            "entrypoint.sh.j2", plan, owner=owner, mode=f"{PRIVATE_MODE:04o}",
                            copies=[(shell_quote(f"{STAGING_DIR}/{p.rsplit('/', 1)[1]}"),
                                     shell_quote(p)) for p in sorted(private)],
                            group=shell_quote(owner.group),
                            chain=shell_quote(ENTRYPOINTS[server or "generic"])))
        entrypoint = ("sh", f"{CONFIG_DIR}/entrypoint.sh")
    return ServiceTls(service, server, clients, tuple(sorted(secrets)), tuple(sorted(private)),
                      tuple(sorted(configs)), dict(sorted(env.items())), command, entrypoint,
                      owner, args)


def outputs(plan: Plan) -> list[Output]:
    """The recipe files castle generate writes under tls/ (configs compose mounts)."""
    files: dict[str, Output] = {}
    for svc in plan.services:
        wiring = service_tls(plan, svc.name)
        for cfg in wiring.configs if wiring else ():
            files[cfg.out] = Output(cfg.out, cfg.text)
    return [files[k] for k in sorted(files)]
