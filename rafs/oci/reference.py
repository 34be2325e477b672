"""Image references, spelled as skopeo spells them: ``docker://HOST[:PORT]/REPO[:TAG][@sha256:HEX]``.

:func:`parse_reference` checks a reference by the distribution reference grammar (docker/distribution
reference/regexp.go): a first component with a ``.`` or ``:`` or named ``localhost`` is the registry,
else the image is on Docker Hub (``registry-1.docker.io``, one-component names under ``library/``);
the tag defaults to ``latest``. :func:`resolve` fetches the manifest (through an index, choosing the
platform: ``--platform``, default the host's, a Nydus manifest preferred), finds the Nydus bootstrap
layer (annotated ``containerd.io/snapshot/nydus-bootstrap: "true"``) and reads ``image/image.boot``
out of it by ranged reads, streamed and bounded (:mod:`rafs.oci.bootstrap_layer`), checking the
layer's digest. Documents fetched by digest are checked against it; every document is validated by
:mod:`rafs.oci.documents` before it is used.
"""

from __future__ import annotations

import hashlib
import io
import platform as _platform
import re
from dataclasses import dataclass

from ..errors import InvalidArgumentError, InvalidImageError, ParameterError
from ..limits import MAX_BOOTSTRAP_LAYER
from ..io.registry import RegistryBackend, RegistryClient
from ..io.registry_auth import Credentials, RegistryAuth
from ..io.retry import RetryPolicy
from . import documents, spec

SCHEME = "docker://"
DOCKER_HUB = "docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
LAYER_READ = 4 << 20                             # bytes per ranged GET while streaming the bootstrap layer
ACCEPT = ", ".join((spec.OCI_INDEX, spec.DOCKER_MANIFEST_LIST, spec.OCI_MANIFEST, spec.DOCKER_MANIFEST))
# registry/reference/regexp.go: path components, tags and the domain
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                     r"|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Go's GOARCH names for what platform.machine() says
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64"}
OPTION_KEYS = ("platform", "insecure", "plain_http", "docker_config", "username", "password", "registry_token",
               "ca_file", "timeout", "connect_timeout", "retry_limit")


@dataclass(frozen=True)
class Reference:
    """A parsed reference: ``host`` (with port), ``repo``, ``tag`` and/or ``digest``."""

    host: str
    repo: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """What the registry's manifest endpoint takes: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return (f"{SCHEME}{self.host}/{self.repo}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def is_reference(source) -> bool:
    """Whether ``source`` names an image in a registry (``docker://HOST/REPO:TAG``), not a path."""
    return isinstance(source, str) and source.startswith(SCHEME)


def parse_reference(text: str) -> Reference:
    """A :class:`Reference` from ``docker://...``; a clear InvalidArgumentError for anything else."""
    if not is_reference(text):
        raise InvalidArgumentError(f"{text[:200]!r} is not an image reference (docker://HOST/REPO:TAG)")
    rest = text[len(SCHEME):]
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgumentError(f"{text[:200]!r}: the digest must be sha256:<64 lowercase hex digits>")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, path = first, remainder
        if not _DOMAIN.fullmatch(host):
            raise InvalidArgumentError(f"{text[:200]!r}: {host[:100]!r} is not a registry host[:port]")
    else:
        host, path = DOCKER_HUB, rest
    tag = None
    name, colon, maybe_tag = path.rpartition(":")
    if colon and "/" not in maybe_tag:
        path, tag = name, maybe_tag
        if not _TAG.fullmatch(tag):
            raise InvalidArgumentError(f"{text[:200]!r}: {tag[:130]!r} is not a valid tag")
    if not _REPO.fullmatch(path) or len(path) > 255:
        raise InvalidArgumentError(f"{text[:200]!r}: {path[:100]!r} is not a valid repository name "
                                   "(lowercase letters, digits, separators . _ - and /)")
    if host == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    if tag is None and digest is None:
        tag = "latest"
    return Reference(host, path, tag, digest)


def host_platform() -> str:
    machine = _platform.machine().lower()
    arch = _ARCH.get(machine, machine)
    return f"linux/{arch}/v7" if machine == "armv7l" else f"linux/{arch}"


def _platform_matches(entry: dict, wanted: str) -> bool:
    plat = entry.get("platform") or {}
    parts = wanted.split("/")
    have = [plat.get("os", ""), plat.get("architecture", ""), plat.get("variant", "")]
    return all(want == got for want, got in zip(parts, have))


def _is_nydus(entry: dict) -> bool:
    features = (entry.get("platform") or {}).get("os.features") or []
    return (isinstance(features, list) and spec.NYDUS_OS_FEATURE in features
            or entry.get("artifactType") == spec.NYDUS_ARTIFACT_TYPE)


@dataclass
class Resolved:
    """What a reference leads to: the registry, the manifest and its digest, the bootstrap's bytes."""

    reference: Reference
    registry: RegistryClient
    manifest_digest: str
    manifest: dict
    bootstrap: bytes


def registry_for(ref: Reference, options: dict | None = None) -> RegistryClient:
    """A :class:`RegistryClient` for ``ref`` with the options of :func:`resolve` (credentials from
    ``username``/``password``, ``registry_token`` or the docker config.json)."""
    from ..io import docker_config
    from ..io.http import HttpClient
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise InvalidArgumentError(f"storage option {', '.join(map(repr, unknown))} not understood for image "
                                   f"references (supported: {', '.join(OPTION_KEYS)})")
    http_options = {k: options[k] for k in ("timeout", "connect_timeout") if options.get(k) is not None}
    client = HttpClient.from_options({**http_options, "skip_verify": bool(options.get("insecure"))})
    if options.get("ca_file"):
        client.ca_files = (str(options["ca_file"]),)
    if options.get("username") is not None:
        credentials = Credentials(str(options["username"]), str(options.get("password") or ""))
    else:
        credentials = docker_config.credentials_for(
            ref.host if ref.host != DOCKER_HUB else DOCKER_HUB,
            docker_config.config_path() if not options.get("docker_config") else str(options["docker_config"]))
    host = DOCKER_HUB_REGISTRY if ref.host == DOCKER_HUB else ref.host
    auth = RegistryAuth(credentials, token=options.get("registry_token") or None,
                        scope=f"repository:{ref.repo}:pull")
    return RegistryClient(host, ref.repo, scheme="http" if options.get("plain_http") else "https", auth=auth,
                          client=client)


def fetch_manifest(registry: RegistryClient, name: str, what: str, digest: str | None,
                   retry: RetryPolicy) -> tuple[bytes, str, str]:
    """``GET manifests/<name>`` (a manifest or an index, bounded, retried): (body, its sha256 digest, the
    answer's media type), the body checked against ``digest`` when one is expected."""
    response, body = retry.call(lambda: registry.request("GET", f"manifests/{name}", what,
                                                         headers={"Accept": ACCEPT}, limit=documents.MAX_JSON_SIZE),
                                f"{registry.describe()}: {what}")
    actual = "sha256:" + hashlib.sha256(body).hexdigest()
    if digest is not None and actual != digest:
        raise InvalidImageError(f"content hashes to {actual}, not {digest}", structure=what)
    return body, actual, (response.getheader("Content-Type") or "").split(";")[0].strip()


def _document(registry: RegistryClient, ref_name: str, what: str, digest: str | None, retry: RetryPolicy):
    body, actual, _ = fetch_manifest(registry, ref_name, what, digest, retry)
    return documents.parse(body, what), actual


def resolve(source: str, options: dict | None = None) -> Resolved:
    """Resolve a ``docker://`` reference to its Nydus manifest and bootstrap (see the module doc).

    ``options``: ``platform`` (``os/arch[/variant]``), ``insecure`` (no TLS verification),
    ``plain_http``, ``docker_config`` (a config.json path), ``username``/``password``,
    ``registry_token``, ``ca_file``, ``timeout``, ``connect_timeout``, ``retry_limit``.
    """
    ref = parse_reference(source)
    options = dict(options or {})
    wanted = options.pop("platform", None) or host_platform()
    retry = RetryPolicy(**({"limit": options.pop("retry_limit")} if options.get("retry_limit") is not None
                           else {}))
    options.pop("retry_limit", None)
    registry = registry_for(ref, options)
    retry.secrets = registry.secrets()
    what = f"manifest {ref.name} of {ref}"
    document, digest = _document(registry, ref.name, what, ref.digest, retry)
    if "manifests" in document or document.get("mediaType") in spec.INDEX_TYPES:
        documents.index(document, what)
        entries = [m for m in document["manifests"] if _platform_matches(m, wanted)]
        if not entries:
            have = sorted({"/".join(filter(None, ((m.get("platform") or {}).get(k, "") for k in
                                                  ("os", "architecture", "variant"))))
                           for m in document["manifests"]})
            raise ParameterError("{ref}: no manifest for platform {wanted} (the index has: {have}); choose one "
                                 "with {platform}", ref=ref, wanted=wanted, have=", ".join(have) or "no platforms")
        chosen = next((m for m in entries if _is_nydus(m)), entries[0])
        what = f"manifest {chosen['digest']} ({wanted}) of {ref}"
        document, digest = _document(registry, chosen["digest"], what, chosen["digest"], retry)
    documents.manifest(document, what)
    boot = next((layer for layer in reversed(document["layers"])
                 if (layer.get("annotations") or {}).get(spec.LAYER_NYDUS_BOOTSTRAP) == "true"), None)
    if boot is None:
        raise InvalidImageError(f"{ref} is not a Nydus image: no layer is annotated "
                                f"{spec.LAYER_NYDUS_BOOTSTRAP}=true (convert it with rafs convert)",
                                structure="manifest")
    bootstrap = _read_bootstrap_layer(registry, boot, retry)
    return Resolved(ref, registry, digest, document, bootstrap)


class _Hashing(io.RawIOBase):
    def __init__(self, inner):
        self.inner, self.hash, self.count = inner, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.inner.read(len(buffer))
        self.hash.update(data)
        self.count += len(data)
        buffer[:len(data)] = data
        return len(data)


def _read_bootstrap_layer(registry: RegistryClient, desc: dict, retry: RetryPolicy) -> bytes:
    from ..io.rangestream import RangeStream
    from ..io.registry import RegistryBlobReader
    from .bootstrap_layer import extract_bootstrap
    size = desc["size"]
    if size > MAX_BOOTSTRAP_LAYER:
        raise InvalidImageError(f"{size} bytes, over the {MAX_BOOTSTRAP_LAYER}-byte limit",
                                structure="bootstrap layer")
    blob_id = documents.digest_hex(desc["digest"], "bootstrap layer")
    reader = RegistryBlobReader(registry, blob_id, retry)
    reader.size = size
    hashing = _Hashing(io.BufferedReader(RangeStream(reader, 0, size), LAYER_READ))
    out = io.BytesIO()
    extract_bootstrap(io.BufferedReader(hashing, LAYER_READ), out,
                      gzipped=not desc.get("mediaType", "").endswith(".tar"))
    while hashing.read(LAYER_READ):                 # the digest covers the whole layer
        pass
    digest = "sha256:" + hashing.hash.hexdigest()
    if digest != desc["digest"]:
        raise InvalidImageError(f"content hashes to {digest}, not {desc['digest']}", structure="bootstrap layer")
    return out.getvalue()


def open_reference(source: str, *, options: dict | None = None, config=None):
    """What :func:`rafs.open` needs of a ``docker://`` reference: (the bootstrap from the registry, a
    locator reading the blobs lazily from it through the cache of ``config`` (a nydusd configuration)
    if one is given, the image's name)."""
    from ..io.config import ConfigLocator, NydusdConfig, parse_config
    resolved = resolve(source, options)
    parsed = parse_config(config) if config is not None else NydusdConfig(backend_type="registry")
    limit = (options or {}).get("retry_limit")
    retry = RetryPolicy(limit=parsed.retry_limit if limit is None else limit)
    backend = RegistryBackend({}, retry=retry, registry=resolved.registry)
    locator = ConfigLocator(parsed, backend=backend)
    return resolved.bootstrap, locator, str(resolved.reference)
