"""kopf registrations, and nothing else: kopf runs the process (its login, its start,
its stop, its health probe) and each handler delegates to the operator's
:class:`~distillery.kube.runtime.Runtime`, which owns the watches, the controllers and
the loops.

Level-triggered: every change of a DMD, of one of its children or pods, and a slow
resync call the same reconcile, which recomputes the desired state from scratch and
writes only what differs. The watches are the runtime's own, not kopf's (why:
:mod:`distillery.kube.informer`): kopf's indices held every handler back with one
readiness toggle per object, quadratic in the fleet on a restart.

No finalizers: children carry owner references and are garbage-collected; a DMD can be
deleted while the operator is down.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from distillery.kube.rest import login as operator_login
from distillery.kube.runtime import Runtime
from distillery.settings import Settings


def _settings(memo: Any) -> Settings:
    # `distillery run` passes its settings in the memo; `kopf run` on this module reads
    # the environment.
    cfg: Settings | None = getattr(memo, "settings", None)
    return cfg or Settings.from_env()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo:
    """kopf's identity is the operator's own (:func:`distillery.kube.rest.login`): the
    same kubeconfig or service account, exec plugins included, which kopf's built-in
    logins do not run."""
    creds = operator_login(_settings(kwargs.get("memo")).kubeconfig or None).current()
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_data=creds.ca_pem,
        insecure=creds.insecure or None,
        certificate_data=creds.cert_pem,
        private_key_data=creds.key_pem,
        token=creds.token,
        username=creds.username,
        password=creds.password,
        default_namespace=creds.namespace,
        proxy_url=creds.proxy_url,
        expiration=creds.expires,
    )


@kopf.on.startup()
async def startup(**kwargs: Any) -> None:
    settings: kopf.OperatorSettings = kwargs["settings"]
    memo: kopf.Memo = kwargs["memo"]
    cfg = _settings(memo)
    # kopf watches nothing of ours (the runtime does); with peering, it watches peers.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.watching.inactivity_timeout = 330
    settings.networking.request_timeout = 60
    # Our own events carry the meaningful transitions; kopf posts only its warnings.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "distillery.dev/operator"
    settings.peering.standalone = not cfg.peering
    if cfg.peering:
        settings.peering.name = cfg.peering
        settings.peering.priority = cfg.priority
    memo.runtime = await Runtime.start(cfg)


@kopf.on.cleanup()
async def cleanup(**kwargs: Any) -> None:
    runtime: Runtime | None = getattr(kwargs["memo"], "runtime", None)
    if runtime is not None:
        await runtime.stop()


@kopf.on.probe(id="reconciler")
def probe(**kwargs: Any) -> str:
    """What /healthz says: starting, listing (the watches fill the indices), or ok."""
    runtime: Runtime | None = getattr(kwargs["memo"], "runtime", None)
    if runtime is None:
        return "starting"
    return "ok" if runtime.indices is not None else "listing"
