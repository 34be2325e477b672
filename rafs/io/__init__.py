"""Storage: moving and caching the bytes of bootstraps and blobs. Nothing here knows inodes or directories.

``source`` (RangeReaders over paths, http(s) and fsspec URLs, file objects), ``http`` (the ranged HTTP
client: a deadline per request, never more than the bytes asked for), ``redact`` (secrets and URL
userinfo kept out of messages), ``retry`` (transient faults, retry_limit),
``backends`` (nydusd's localfs / s3 / http-proxy), ``config`` (nydusd v1/v2 configuration files
and the locator they make), ``blobs`` (finding a blob by id), ``fetch`` (lazy chunk reads, merged ranged
requests, in-flight de-duplication), ``cache`` and ``layout`` (the nydusd blob cache in ``work_dir``),
``prefetch`` (background fetch with bounded workers) and ``push`` (nydusify's --backend-push). The
``rafs://`` fsspec filesystem, which needs :class:`rafs.Image`, is ``rafs.fsspec``.
"""
