"""Where the operator's credentials come from (distillery.kube.rest.login): kubeconfig
files as kubectl merges them, the pod's service account, exec plugins; and the errors
that say what is missing. Pure file handling, no server (the credentials are used
against the real API server in tests/integration/test_rest_server.py)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillery.kube.rest import Credentials, CredentialsError, login, resource_path

CA = "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nclient\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubeconfig(
    path: Path,
    user: dict[str, Any],
    cluster: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    current: str | None = "ctx",
) -> Path:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1:6443/"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": context or {"cluster": "c", "user": "u"}}],
    }
    if current:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(autouse=True)
def outside_a_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_inline_certificates_are_decoded_to_pem(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config",
        {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)},
        {"server": "https://10.0.0.1:6443/", "certificate-authority-data": b64(CA)},
        {"cluster": "c", "user": "u", "namespace": "team-a"},
    )
    creds = login(str(path)).current()
    assert creds.server == "https://10.0.0.1:6443"
    assert (creds.ca_pem, creds.cert_pem, creds.key_pem) == (CA, CERT, KEY)
    assert creds.namespace == "team-a"
    assert creds.authorization() is None  # the certificate is the identity


def test_file_names_are_relative_to_the_kubeconfig_that_names_them(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_text(CA)
    path = kubeconfig(
        tmp_path / "config",
        {"token": "t0k3n"},
        {"server": "https://api:6443", "certificate-authority": "pki/ca.crt"},
    )
    creds = login(str(path)).current()
    assert creds.ca_pem == CA
    assert creds.authorization() == "Bearer t0k3n"


def test_kubeconfig_files_merge_as_kubectl_merges_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first file sets the context and a user; the second defines the cluster, and a
    # user of the same name that must not win.
    first = tmp_path / "first"
    first.write_text(
        yaml.safe_dump(
            {
                "current-context": "ctx",
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "first"}}],
            }
        )
    )
    second = kubeconfig(tmp_path / "second", {"token": "second"}, current="other")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    creds = login().current()
    assert creds.token == "first"
    assert creds.server == "https://10.0.0.1:6443"


def test_basic_auth_and_insecure_are_carried(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config",
        {"username": "admin", "password": "secret"},
        {"server": "https://api:6443", "insecure-skip-tls-verify": True},
    )
    creds = login(str(path)).current()
    assert creds.insecure
    assert creds.authorization() == f"Basic {b64('admin:secret')}"
    # What may reach a log names the server and the kind of identity, never the secret.
    assert "secret" not in repr(creds) and "basic auth" in repr(creds)


@pytest.mark.parametrize(
    ("user", "cluster", "context", "current", "message"),
    [
        ({}, None, None, None, "sets no current-context"),
        ({}, None, None, "missing", "context 'missing' is not defined"),
        ({}, None, {"cluster": "nope", "user": "u"}, "ctx", "names the cluster 'nope'"),
        ({}, None, {"cluster": "c", "user": "nobody"}, "ctx", "names the user 'nobody'"),
        ({}, {"certificate-authority-data": b64(CA)}, None, "ctx", "has no server"),
        ({"auth-provider": {"name": "gcp"}}, None, None, "ctx", "auth-provider 'gcp'"),
        ({"client-certificate-data": b64(CERT)}, None, None, "ctx", "needs both"),
        ({"client-key-data": "%%%"}, None, None, "ctx", "client-key-data is not base64"),
        ({"tokenFile": "absent"}, None, None, "ctx", "cannot read tokenFile"),
    ],
)
def test_what_is_wrong_with_a_kubeconfig_is_said(
    tmp_path: Path,
    user: dict[str, Any],
    cluster: dict[str, Any] | None,
    context: dict[str, Any] | None,
    current: str | None,
    message: str,
) -> None:
    path = kubeconfig(tmp_path / "config", user, cluster, context, current)
    with pytest.raises(CredentialsError, match=message) as err:
        login(str(path)).current()
    assert str(path) in str(err.value)


def test_no_kubeconfig_at_all_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"cannot read kubeconfig .*--kubeconfig"):
        login()


def test_a_token_file_is_read_again_after_the_server_refused_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("old\n")
    credentials = login(str(kubeconfig(tmp_path / "config", {"tokenFile": str(token)})))
    assert credentials.current().token == "old"
    token.write_text("new\n")
    assert credentials.current().token == "old"  # not re-read on every request
    credentials.invalidate()
    assert credentials.current().token == "new"


def exec_plugin(tmp_path: Path, status: dict[str, Any], exit_code: int = 0) -> dict[str, Any]:
    """A kubeconfig exec section running a script that counts its runs and prints an
    ExecCredential with ``status``."""
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, os, pathlib, sys\n"
        f"runs = pathlib.Path({str(tmp_path / 'runs')!r})\n"
        "runs.write_text(str(int(runs.read_text() or 0) + 1) if runs.exists() else '1')\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['spec']['interactive'] is False, info\n"
        "assert os.environ['PLUGIN_REGION'] == 'eu-1'\n"
        f"status = {status!r}\n"
        f"if {exit_code}:\n"
        "    print('the plugin says: log in first', file=sys.stderr)\n"
        f"    print(json.dumps({{'status': status}})); sys.exit({exit_code})\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential',"
        " 'status': status}))\n"
    )
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "env": [{"name": "PLUGIN_REGION", "value": "eu-1"}],
        }
    }


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


def test_an_exec_plugin_is_run_again_only_when_its_credential_expires(tmp_path: Path) -> None:
    lasting = {"token": "from-plugin", "expirationTimestamp": "2999-01-01T00:00:00Z"}
    path = kubeconfig(tmp_path / "config", exec_plugin(tmp_path, lasting))
    credentials = login(str(path))
    assert credentials.current().token == "from-plugin"
    credentials.current()
    assert runs(tmp_path) == 1  # once at login, cached until it expires

    expired = {"token": "short", "expirationTimestamp": "2000-01-01T00:00:00Z"}
    path = kubeconfig(tmp_path / "config", exec_plugin(tmp_path, expired))
    credentials = login(str(path))
    before = runs(tmp_path)
    credentials.current()
    credentials.current()
    assert runs(tmp_path) == before + 2  # expired: every use asks again


def test_an_exec_plugin_may_issue_a_client_certificate(tmp_path: Path) -> None:
    status = {"clientCertificateData": CERT, "clientKeyData": KEY}
    creds = login(str(kubeconfig(tmp_path / "config", exec_plugin(tmp_path, status)))).current()
    assert (creds.cert_pem, creds.key_pem, creds.token) == (CERT, KEY, None)


def test_a_failing_exec_plugin_is_named_with_its_own_words_not_its_output(
    tmp_path: Path,
) -> None:
    user = exec_plugin(tmp_path, {"token": "must-not-leak"}, exit_code=3)
    with pytest.raises(CredentialsError) as err:
        login(str(kubeconfig(tmp_path / "config", user))).current()
    assert "exited 3: the plugin says: log in first" in str(err.value)
    assert "must-not-leak" not in str(err.value)


def test_an_exec_plugin_that_prints_no_credential_is_refused(tmp_path: Path) -> None:
    user = exec_plugin(tmp_path, {})
    with pytest.raises(CredentialsError, match="neither a token nor a certificate"):
        login(str(kubeconfig(tmp_path / "config", user))).current()
    missing = {"exec": {"command": str(tmp_path / "no-such-plugin")}}
    with pytest.raises(CredentialsError, match=r"no-such-plugin.*failed"):
        login(str(kubeconfig(tmp_path / "config", missing))).current()


def service_account(directory: Path, token: str = "sa-token") -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "token").write_text(token + "\n")
    (directory / "ca.crt").write_text(CA)
    (directory / "namespace").write_text("distillery-system\n")
    return directory


def test_in_a_pod_the_service_account_is_used_before_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sa = service_account(tmp_path / "sa")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "config", {"token": "kc"})))
    creds = login(service_account=sa).current()
    assert creds.server == "https://10.96.0.1:443"
    assert (creds.token, creds.ca_pem, creds.namespace) == ("sa-token", CA, "distillery-system")
    # An explicit kubeconfig wins even in a pod.
    assert login(str(tmp_path / "config"), service_account=sa).current().token == "kc"


def test_a_rotated_service_account_token_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sa = service_account(tmp_path / "sa")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    credentials = login(service_account=sa)
    assert credentials.current().server == "https://[fd00::1]:6443"
    service_account(sa, "rotated")
    credentials.invalidate()  # a 401, or a minute gone by
    assert credentials.current().token == "rotated"


def test_resource_paths() -> None:
    assert resource_path("", "v1", "pods") == "/api/v1/pods"
    assert resource_path("apps", "v1", "deployments", "ns", "d", "scale") == (
        "/apis/apps/v1/namespaces/ns/deployments/d/scale"
    )
    assert resource_path("", "v1", "nodes", None, "n") == "/api/v1/nodes/n"


def test_credentials_that_carry_no_secret_in_their_repr() -> None:
    creds = Credentials(server="https://api", token="t0ps3cret", key_pem=KEY, cert_pem=CERT)
    assert "t0ps3cret" not in repr(creds) and "PRIVATE" not in repr(creds)
    assert json.dumps(repr(creds))  # printable


def test_the_operator_runs_without_the_kubernetes_package() -> None:
    """Every module `distillery run` loads imports with the package made unimportable,
    as in the operator's image (import-linter forbids the static imports; this also
    catches kopf's and any lazy one on the way)."""
    import subprocess

    code = (
        "import sys\n"
        "sys.modules['kubernetes'] = None\n"
        "import kopf, distillery.cli, distillery.handlers, distillery.kube.leader\n"
        "import distillery.kube.runtime\n"
        "assert 'kubernetes.client' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
