"""The DistilledModelDeployment API: spec/status models and CRD generation (pure)."""

from distillery.api.types import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Condition,
    DistilledModelDeployment,
    DistilledModelDeploymentSpec,
    DistilledModelDeploymentStatus,
    ModelArchitecture,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Condition",
    "DistilledModelDeployment",
    "DistilledModelDeploymentSpec",
    "DistilledModelDeploymentStatus",
    "ModelArchitecture",
]
