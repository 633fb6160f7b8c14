"""Where the weights come from, and how a pod gets them.

- ``hf://org/name[/file.gguf]``: the engine downloads from the Hub into the model cache
  volume; the token (if any) reaches it as ``HF_TOKEN`` through a ``secretKeyRef``.
- ``pvc://claim/path``: the claim is mounted read-only at ``/models/pvc``.
- ``s3://bucket/path``, ``gs://bucket/path``: an init container syncs them into the
  cache volume (credentials from the Secret by reference, never copied).
- ``oci://registry/repo:tag``: an image volume (the model packaged as an OCI artifact).
"""

from __future__ import annotations

from dataclasses import dataclass

# The CLI command that copies an object-store prefix into a folder, by scheme: the
# serving pods' init container and a weight cache's fill Job run the same one.
SYNC_ARGV: dict[str, tuple[str, ...]] = {
    "s3": ("aws", "s3", "sync", "--only-show-errors"),
    "gs": ("gcloud", "storage", "rsync", "--recursive"),
}


class SourceError(ValueError):
    """The model URI cannot be served as written."""


@dataclass(frozen=True)
class ModelSource:
    scheme: str  # hf | pvc | s3 | gs | oci
    location: str  # everything after scheme://

    @classmethod
    def parse(cls, uri: str | None, model_name: str) -> ModelSource:
        if not uri:
            return cls("hf", model_name)
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme not in ("hf", "pvc", "s3", "gs", "oci") or not rest:
            raise SourceError(f"model.uri {uri!r}: expected hf://, pvc://, s3://, gs:// or oci://")
        if scheme == "pvc" and "/" not in rest.strip("/"):
            rest = rest.strip("/") + "/"
        if ".." in rest.split("/"):
            raise SourceError(f"model.uri {uri!r}: '..' is not allowed in a path")
        return cls(scheme, rest)

    @property
    def claim(self) -> str:
        """The PVC name of a pvc:// source."""
        return self.location.split("/", 1)[0]

    @property
    def local_path(self) -> str:
        """Where the weights are inside the pod, for sources that are not hf://."""
        if self.scheme == "pvc":
            sub = self.location.split("/", 1)[1] if "/" in self.location else ""
            return "/models/pvc/" + sub.strip("/") if sub.strip("/") else "/models/pvc"
        if self.scheme == "oci":
            return "/models/oci"
        return "/models/fetched"

    @property
    def hf_repo(self) -> str:
        parts = self.location.strip("/").split("/")
        return "/".join(parts[:2])

    @property
    def hf_file(self) -> str | None:
        parts = self.location.strip("/").split("/")
        return "/".join(parts[2:]) or None

    @property
    def engine_model_arg(self) -> str:
        """The model argument vLLM, SGLang and TGI take: a Hub id or a local folder."""
        return self.hf_repo if self.scheme == "hf" else self.local_path

    @property
    def llamacpp_model_args(self) -> list[str]:
        if self.scheme == "hf":
            args = ["--hf-repo", self.hf_repo]
            if self.hf_file:
                args += ["--hf-file", self.hf_file]
            return args
        return ["--model", self.local_path]
