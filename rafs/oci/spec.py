"""Names of the OCI image format and of what nydusify writes into it: media types, annotation keys,
file names. Constants only.

OCI names come from opencontainers/image-spec (specs-go/v1/mediatype.go, layout.go, annotations.go),
Docker's from containerd's images/mediatypes.go; the Nydus ones from containerd/nydus-snapshotter
pkg/converter/constant.go, pkg/converter/convert_unix.go and goharbor/acceleration-service
pkg/driver/nydus/nydus.go, which ``nydusify convert`` runs.
"""

from __future__ import annotations

# -- the OCI image layout (image-spec image-layout.md) ----------------------------------------------
LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = "1.0.0"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"

# -- media types --------------------------------------------------------------------------------------
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
LAYER_TYPES = (OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_NONDISTRIBUTABLE,
               OCI_LAYER_NONDISTRIBUTABLE_GZIP, OCI_LAYER_NONDISTRIBUTABLE_ZSTD, DOCKER_LAYER,
               DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN)
# What ``docker2oci`` (nydusify --oci) turns Docker media types into (containerd images/converter).
DOCKER_TO_OCI = {DOCKER_MANIFEST_LIST: OCI_INDEX, DOCKER_MANIFEST: OCI_MANIFEST, DOCKER_CONFIG: OCI_CONFIG,
                 DOCKER_LAYER: OCI_LAYER, DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
                 DOCKER_LAYER_FOREIGN: OCI_LAYER_NONDISTRIBUTABLE_GZIP}

# -- annotations ---------------------------------------------------------------------------------------
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_IMAGE_NAME = "io.containerd.image.name"
UNCOMPRESSED = "containerd.io/uncompressed"

# -- Nydus (nydus-snapshotter pkg/converter/constant.go) ----------------------------------------------
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"          # MediaTypeNydusBlob
NYDUS_CONFIG = "application/vnd.nydus.image.config.v1+json"           # ManifestConfigNydus (merged index)
NYDUS_OS_FEATURE = "nydus.remoteimage.v1"                              # ManifestOSFeatureNydus
NYDUS_ARTIFACT_TYPE = "application/vnd.nydus.image.manifest.v1+json"   # ManifestArtifactTypeNydus
BOOTSTRAP_NAME_IN_LAYER = "image/image.boot"                           # BootstrapFileNameInLayer
BOOTSTRAP_DIR_IN_LAYER = "image"

LAYER_NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"
LAYER_NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
LAYER_FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
LAYER_NYDUS_REF = "containerd.io/snapshot/nydus-ref"
# manifest annotations the acceleration-service nydus driver appends
MANIFEST_SOURCE_DIGEST = "containerd.io/snapshot/nydus-source-digest"
MANIFEST_SOURCE_REFERENCE = "containerd.io/snapshot/nydus-source-reference"
MANIFEST_FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
MANIFEST_BUILDER_VERSION = "containerd.io/snapshot/nydus-builder-version"

# the history entry nydusify appends to the image config for the bootstrap layer
BOOTSTRAP_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}
