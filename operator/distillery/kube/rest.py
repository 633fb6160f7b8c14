"""The operator's HTTP client for the Kubernetes API: who it is, how it connects, what
an error says.

Why its own client and not the official ``kubernetes`` package: that package's
generated models cost 34 MiB of resident memory at import, a fifth of the operator's
budget at 2,000 DMDs, and the operator never uses them: it reads and writes plain JSON
(server-side apply, merge patches, watches). kopf imports those models whenever the
package is installed, so the operator's image does not install it and ``distillery run``
keeps it out of the process when a development environment has it.

What is here is what client-go's ``rest`` package does for a controller: the
credentials of a kubeconfig (certificates, tokens, token files, exec plugins such as
``aws eks get-token`` or ``kubelogin``) or of the pod's service account (its token
re-read every minute, as projected tokens rotate), one pool of keep-alive connections,
the path of a resource, and :class:`ApiError` for any answer outside 2xx. A 401 logs in
once more (a rotated token, an expired exec credential) and repeats the request.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
JSON = "application/json"
# client-go re-reads a projected service-account token this often; the kubelet rotates
# it well before it expires.
TOKEN_FILE_REREAD_SECONDS = 60.0
# An exec plugin's credential is renewed this long before it expires.
EXPIRY_MARGIN_SECONDS = 30.0
EXEC_TIMEOUT_SECONDS = 60.0
CONNECT_SECONDS = 10.0
# A request that is not a watch: the API server answers or gives up well within this.
READ_SECONDS = 60.0


class ApiError(Exception):
    """The API server answered outside 2xx: ``status``, ``reason`` (the HTTP reason
    phrase) and the raw ``body``, whose Status ``message`` says why."""

    def __init__(self, status: int = 0, reason: str = "", body: str = "") -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status, self.reason, self.body = status, reason, body

    @property
    def message(self) -> str:
        """The Status object's message (empty when the body is not one)."""
        try:
            return str(json.loads(self.body or "{}").get("message") or "")
        except (ValueError, AttributeError):
            return ""


class CredentialsError(Exception):
    """No usable credentials: the message says what is missing and how to provide it."""


@dataclass(frozen=True, kw_only=True, repr=False)
class Credentials:
    """Where the API server is and who the operator is to it, at one moment.

    PEM text, never file names, so a rotated file is read again by whoever built this.
    ``repr`` names the server and the kind of identity only: these end up in logs."""

    server: str
    ca_pem: str | None = None  # None: the system's trust store
    insecure: bool = False
    tls_server_name: str | None = None
    proxy_url: str | None = None
    cert_pem: str | None = None
    key_pem: str | None = None
    token: str | None = None
    username: str | None = None
    password: str | None = None
    namespace: str | None = None
    expires: datetime | None = None

    def __repr__(self) -> str:
        kind = (
            "client certificate"
            if self.cert_pem
            else "bearer token"
            if self.token
            else "basic auth"
            if self.username
            else "anonymous"
        )
        return f"Credentials({self.server}, {kind})"

    def tls(self) -> tuple[str | None, bool, str | None, str | None, str | None, str | None]:
        """What a connection pool is built from: a change means a new pool."""
        return (
            self.ca_pem,
            self.insecure,
            self.tls_server_name,
            self.proxy_url,
            self.cert_pem,
            self.key_pem,
        )

    def authorization(self) -> str | None:
        if self.token:
            return f"Bearer {self.token}"
        if self.username is not None:
            pair = f"{self.username}:{self.password or ''}".encode()
            return f"Basic {base64.b64encode(pair).decode()}"
        return None

    def expired(self, now: datetime) -> bool:
        return (
            self.expires is not None
            and (self.expires - now).total_seconds() < EXPIRY_MARGIN_SECONDS
        )


class Login:
    """Fresh credentials on demand: a service account's token file re-read every minute,
    an exec plugin run again before its credential expires or after a 401."""

    def __init__(
        self,
        read: Callable[[], Credentials],
        refresh_every: float | None = None,
        initial: Credentials | None = None,
    ) -> None:
        self._read = read
        self._refresh_every = refresh_every
        self._lock = threading.Lock()
        self._current = initial
        self._read_at = time.monotonic() if initial else -float("inf")

    def current(self) -> Credentials:
        with self._lock:
            stale = (
                self._current is None
                or self._current.expired(datetime.now(UTC))
                or (
                    self._refresh_every is not None
                    and time.monotonic() - self._read_at >= self._refresh_every
                )
            )
            if stale:
                self._current = self._read()
                self._read_at = time.monotonic()
            assert self._current is not None
            return self._current

    def invalidate(self) -> None:
        """The API server refused these credentials: read them again next time."""
        with self._lock:
            self._current = None


def login(kubeconfig: str | None = None, service_account: Path = SERVICE_ACCOUNT_DIR) -> Login:
    """The operator's credentials: ``kubeconfig`` when given; else the pod's service
    account when running in a pod; else ``$KUBECONFIG`` or ``~/.kube/config``.
    Raises :class:`CredentialsError` when none of them is usable."""
    if kubeconfig:
        paths = [Path(kubeconfig).expanduser()]
    else:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT")
        if host and port and (service_account / "token").exists():
            return _in_cluster(host, port, service_account)
        listed = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
        paths = [Path(p).expanduser() for p in listed] or [Path("~/.kube/config").expanduser()]
    config = Kubeconfig.load(paths)
    # Read now, so that what is wrong with them is said at start.
    initial = config.credentials()
    if config.dynamic:  # a token file, an exec plugin: read again when refused or expired
        return Login(config.credentials, initial=initial)
    return Login(lambda: initial, initial=initial)


def _in_cluster(host: str, port: str, directory: Path) -> Login:
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    ca_path = directory / "ca.crt"
    ns_path = directory / "namespace"

    def read() -> Credentials:
        try:
            token = (directory / "token").read_text().strip()
            ca = ca_path.read_text() if ca_path.exists() else None
            namespace = ns_path.read_text().strip() if ns_path.exists() else None
        except OSError as exc:
            raise CredentialsError(f"cannot read the pod's service account: {exc}") from None
        return Credentials(server=server, ca_pem=ca, token=token, namespace=namespace)

    return Login(read, TOKEN_FILE_REREAD_SECONDS)


@dataclass
class Kubeconfig:
    """The current context of one or more kubeconfig files, merged as kubectl does: the
    first file that sets ``current-context`` wins, and so does the first definition of
    each cluster, user and context name. Relative file names are relative to the file
    that names them."""

    cluster: Mapping[str, Any]
    user: Mapping[str, Any]
    context: Mapping[str, Any]
    cluster_dir: Path
    user_dir: Path
    describe: str = ""

    @property
    def dynamic(self) -> bool:
        """Credentials that change under a running operator: a token file, an exec
        plugin's."""
        return bool(self.user.get("exec") or self.user.get("tokenFile"))

    @classmethod
    def load(cls, paths: Sequence[Path]) -> Kubeconfig:
        where = ", ".join(str(p) for p in paths)
        current: str | None = None
        named: dict[str, dict[str, tuple[Mapping[str, Any], Path]]] = {
            "clusters": {},
            "users": {},
            "contexts": {},
        }
        for path in paths:
            try:
                doc = yaml.safe_load(path.read_text()) or {}
            except OSError as exc:
                raise CredentialsError(
                    f"cannot read kubeconfig {path}: {exc.strerror or exc} "
                    "(set --kubeconfig or KUBECONFIG, or run in a pod)"
                ) from None
            except yaml.YAMLError as exc:
                raise CredentialsError(f"kubeconfig {path} is not YAML: {exc}") from None
            if not isinstance(doc, dict):
                raise CredentialsError(f"kubeconfig {path} is not a mapping")
            current = current or doc.get("current-context") or None
            for section, entries in named.items():
                singular = section[:-1]
                for item in doc.get(section) or []:
                    if isinstance(item, dict) and item.get("name") not in entries:
                        entries[str(item.get("name"))] = (item.get(singular) or {}, path.parent)
        if not current:
            raise CredentialsError(
                f"kubeconfig {where} sets no current-context (kubectl config use-context NAME)"
            )
        if current not in named["contexts"]:
            raise CredentialsError(f"kubeconfig {where}: context {current!r} is not defined")
        context, _ = named["contexts"][current]
        cluster_name, user_name = context.get("cluster"), context.get("user")
        if cluster_name not in named["clusters"]:
            raise CredentialsError(
                f"kubeconfig {where}: context {current!r} names the cluster "
                f"{cluster_name!r}, which is not defined"
            )
        if user_name and user_name not in named["users"]:
            raise CredentialsError(
                f"kubeconfig {where}: context {current!r} names the user {user_name!r}, "
                "which is not defined"
            )
        cluster, cluster_dir = named["clusters"][str(cluster_name)]
        user, user_dir = named["users"].get(str(user_name), ({}, Path()))
        if not cluster.get("server"):
            raise CredentialsError(f"kubeconfig {where}: cluster {cluster_name!r} has no server")
        if user.get("auth-provider"):
            provider = (user["auth-provider"] or {}).get("name", "?")
            raise CredentialsError(
                f"kubeconfig {where}: user {user_name!r} uses the auth-provider "
                f"{provider!r}, which Kubernetes removed; use its exec plugin instead "
                "(gke-gcloud-auth-plugin, kubelogin)"
            )
        return cls(
            cluster=cluster,
            user=user,
            context=context,
            cluster_dir=cluster_dir,
            user_dir=user_dir,
            describe=f"kubeconfig {where}, context {current!r}",
        )

    def credentials(self) -> Credentials:
        cluster, user = self.cluster, self.user
        token = user.get("token") or None
        if not token and user.get("tokenFile"):
            token = self._read(self.user_dir, user["tokenFile"], "tokenFile").strip()
        cert = self._pem(self.user_dir, user, "client-certificate")
        key = self._pem(self.user_dir, user, "client-key")
        expires = None
        if user.get("exec"):
            issued = run_exec_plugin(user["exec"], self.describe)
            token = issued.token or token
            cert, key = issued.cert_pem or cert, issued.key_pem or key
            expires = issued.expires
        if bool(cert) != bool(key):
            raise CredentialsError(
                f"{self.describe}: a client certificate needs both the certificate and its key"
            )
        return Credentials(
            server=str(cluster["server"]).rstrip("/"),
            ca_pem=self._pem(self.cluster_dir, cluster, "certificate-authority"),
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
            tls_server_name=cluster.get("tls-server-name") or None,
            proxy_url=cluster.get("proxy-url") or None,
            cert_pem=cert,
            key_pem=key,
            token=token,
            username=user.get("username"),
            password=user.get("password"),
            namespace=self.context.get("namespace"),
            expires=expires,
        )

    def _pem(self, base: Path, section: Mapping[str, Any], key: str) -> str | None:
        data = section.get(f"{key}-data")
        if data:
            try:
                return base64.b64decode(str(data), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise CredentialsError(f"{self.describe}: {key}-data is not base64") from None
        if section.get(key):
            return self._read(base, str(section[key]), key)
        return None

    def _read(self, base: Path, name: str, what: str) -> str:
        path = base / Path(name).expanduser()
        try:
            return path.read_text()
        except OSError as exc:
            raise CredentialsError(
                f"{self.describe}: cannot read {what} {path}: {exc.strerror or exc}"
            ) from None


@dataclass(frozen=True)
class Issued:
    """What an exec plugin returned (ExecCredential's status)."""

    token: str | None
    cert_pem: str | None
    key_pem: str | None
    expires: datetime | None


def run_exec_plugin(spec: Mapping[str, Any], describe: str) -> Issued:
    """Run a kubeconfig's exec plugin and read the ExecCredential it prints."""
    command = spec.get("command")
    if not command:
        raise CredentialsError(f"{describe}: the exec plugin names no command")
    api_version = str(spec.get("apiVersion") or "client.authentication.k8s.io/v1")
    env = {**os.environ}
    for item in spec.get("env") or []:
        env[str(item["name"])] = str(item["value"])
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    )
    argv = [str(command), *(str(a) for a in spec.get("args") or [])]
    try:
        done = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXEC_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialsError(f"{describe}: the exec plugin {command!r} failed: {exc}") from None
    if done.returncode != 0:
        # The plugin's own words; its output (a credential) is never shown.
        said = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise CredentialsError(
            f"{describe}: the exec plugin {command!r} exited {done.returncode}: {said[0][:300]}"
        )
    try:
        status = json.loads(done.stdout).get("status") or {}
    except (ValueError, AttributeError):
        raise CredentialsError(
            f"{describe}: the exec plugin {command!r} did not print an ExecCredential"
        ) from None
    expires = None
    if status.get("expirationTimestamp"):
        expires = datetime.fromisoformat(str(status["expirationTimestamp"]).replace("Z", "+00:00"))
    issued = Issued(
        token=status.get("token") or None,
        cert_pem=status.get("clientCertificateData") or None,
        key_pem=status.get("clientKeyData") or None,
        expires=expires,
    )
    if not issued.token and not issued.cert_pem:
        raise CredentialsError(
            f"{describe}: the exec plugin {command!r} returned neither a token nor a certificate"
        )
    return issued


def ssl_context(creds: Credentials) -> ssl.SSLContext:
    """TLS as the credentials ask: their CA (or the system's), their client
    certificate. Python loads a certificate only from a file: it is written to a private
    temporary file for the moment it takes and removed."""
    context = (
        ssl.create_default_context(cadata=creds.ca_pem)
        if creds.ca_pem
        else (ssl.create_default_context())
    )
    if creds.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if creds.cert_pem and creds.key_pem:
        with tempfile.TemporaryDirectory(prefix="distillery-tls-") as directory:
            chain = Path(directory) / "client.pem"
            fd = os.open(chain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(creds.cert_pem.rstrip("\n") + "\n" + creds.key_pem)
            context.load_cert_chain(chain)
    return context


def resource_path(
    group: str,
    version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The URL path of a collection (no ``name``), an object or its subresource;
    ``group`` "" is the core API."""
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    where = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
    path = f"{base}{where}/{plural}"
    if name is not None:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


Timeout = float | tuple[float, float]


class Rest:
    """Requests to the API server over one pool of keep-alive connections.

    Thread-safe: the operator's worker threads and watch threads share one per purpose.
    """

    def __init__(self, credentials: Login, *, user_agent: str = "", pool_size: int = 10):
        self.login = credentials
        self.user_agent = user_agent or "distillery"
        self.pool_size = pool_size
        self._lock = threading.Lock()
        self._pool: urllib3.PoolManager | None = None
        self._pool_tls: tuple[Any, ...] | None = None

    @property
    def server(self) -> str:
        return self.login.current().server

    def _connection(self) -> tuple[urllib3.PoolManager, Credentials]:
        creds = self.login.current()
        with self._lock:
            if self._pool is None or self._pool_tls != creds.tls():
                if self._pool is not None:
                    self._pool.clear()
                options: dict[str, Any] = {
                    "num_pools": 2,
                    "maxsize": self.pool_size,
                    "ssl_context": ssl_context(creds),
                    # As the official client: connection errors are retried, a request
                    # that may have reached the server is retried only if idempotent.
                    "retries": urllib3.Retry(3, redirect=0, raise_on_status=False),
                }
                if creds.tls_server_name:
                    options["server_hostname"] = creds.tls_server_name
                if creds.insecure:
                    options["cert_reqs"] = ssl.CERT_NONE
                self._pool = (
                    urllib3.ProxyManager(creds.proxy_url, **options)
                    if creds.proxy_url
                    else urllib3.PoolManager(**options)
                )
                self._pool_tls = creds.tls()
            return self._pool, creds

    def open(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        accept: str = JSON,
        timeout: Timeout = (CONNECT_SECONDS, READ_SECONDS),
    ) -> urllib3.BaseHTTPResponse:
        """Send one request; the reply unread (the caller reads or streams it and
        releases it). Raises :class:`ApiError` outside 2xx."""
        url_query = f"?{urlencode(query)}" if query else ""
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        for attempt in range(2):
            pool, creds = self._connection()
            headers = {"Accept": accept, "User-Agent": self.user_agent}
            if payload is not None:
                headers["Content-Type"] = content_type
            authorization = creds.authorization()
            if authorization:
                headers["Authorization"] = authorization
            response = pool.request(
                method,
                f"{creds.server}{path}{url_query}",
                body=payload,
                headers=headers,
                preload_content=False,
                timeout=urllib3.Timeout(connect=connect, read=read),
            )
            if 200 <= response.status <= 299:
                return response
            text = response.data.decode("utf-8", "replace")
            response.release_conn()
            if response.status == 401 and attempt == 0:
                self.login.invalidate()  # a rotated token, an expired exec credential
                continue
            raise ApiError(response.status, response.reason or "", text)
        raise AssertionError("unreachable")  # pragma: no cover

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request and decode its JSON reply."""
        response = self.open(method, path, **kwargs)
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def text(self, method: str, path: str, **kwargs: Any) -> str:
        response = self.open(method, path, accept="*/*", **kwargs)
        try:
            return response.data.decode("utf-8", "replace")
        finally:
            response.release_conn()

    def send(self, method: str, path: str, **kwargs: Any) -> None:
        """Send one request whose reply is not needed: the API server answers a write
        with the whole object (managedFields and all), which nobody here reads."""
        response = self.open(method, path, **kwargs)
        response.drain_conn()
        response.release_conn()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.clear()
                self._pool = None
