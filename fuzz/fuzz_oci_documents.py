"""Coverage-guided fuzzing of the OCI layout documents: bytes -> ``rafs.oci.documents.parse`` and the
checks of oci-layout, an index, a manifest and a config, as ``rafs convert`` and ``rafs check`` read
them. Every input must be accepted or refused with an InvalidImageError.

    python fuzz/fuzz_oci_documents.py /tmp/corpus-oci -max_total_time=600
"""

from __future__ import annotations

from _harness import instrumented, main

with instrumented():
    from rafs.errors import InvalidImageError
    from rafs.oci import documents

_DIGEST = "sha256:" + "ab" * 32
#: Written into an empty corpus: a document of each kind, as nydusify writes them.
SEED_DOCUMENTS = {
    "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
    "index": b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":'
             b'"application/vnd.oci.image.manifest.v1+json","digest":"' + _DIGEST.encode() + b'","size":512,'
             b'"platform":{"architecture":"amd64","os":"linux"},"annotations":{"a":"b"}}]}',
    "manifest": b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":'
                b'"application/vnd.oci.image.config.v1+json","digest":"' + _DIGEST.encode() + b'","size":7},"layers":'
                b'[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"' + _DIGEST.encode() +
                b'","size":32,"annotations":{"containerd.io/snapshot/nydus-bootstrap":"true"}}]}',
    "config": b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["' + _DIGEST.encode() +
              b'"]},"history":[{"created_by":"x"}]}',
}


def TestOneInput(data: bytes) -> None:  # noqa: N802
    try:
        document = documents.parse(data, "fuzz input")
    except InvalidImageError:
        return
    for check in (documents.layout_file, documents.index, documents.manifest, documents.config):
        try:
            check(document, "fuzz input")
        except InvalidImageError:
            pass


if __name__ == "__main__":
    main(TestOneInput, documents=SEED_DOCUMENTS)
