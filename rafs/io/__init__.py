"""Storage: moving and caching the bytes of bootstraps and blobs. Nothing here knows inodes or directories.

``source`` (RangeReaders over paths, fsspec URLs, file objects), ``retry`` (transient faults, retry_limit),
``backends`` (nydusd's localfs / s3 / http-proxy on fsspec), ``config`` (nydusd v1/v2 configuration files
and the locator they make), ``blobs`` (finding a blob by id), ``fetch`` (lazy chunk reads, merged ranged
requests, in-flight de-duplication), ``cache`` and ``layout`` (the nydusd blob cache in ``work_dir``),
``prefetch`` (background fetch with bounded workers) and ``push`` (nydusify's --backend-push). The
``rafs://`` fsspec filesystem, which needs :class:`rafs.Image`, is ``rafs.fsspec``.
"""
