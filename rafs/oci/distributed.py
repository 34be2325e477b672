"""Converting many images at once: ``rafs convert --from-list FILE [--scheduler ADDRESS]``.

Each line of the list names a source and a target (``SOURCE TARGET``: OCI layouts or ``docker://``
references; blank lines and ``#`` comments are skipped). Without a scheduler every image is converted
as ``rafs convert`` converts one, with local worker processes. With the address of a Dask distributed
scheduler (``tcp://HOST:8786``) the per-layer work runs on the cluster's workers instead: a worker
streams its source layer from the source registry, converts it, pushes the Nydus blob to the target
registry and sends back only the layer's bootstrap (metadata, kilobytes to a few megabytes). The client
merges the bootstraps and pushes the manifests, so no layer data passes through it. The workers reach
the registries themselves, with the credentials of their own docker ``config.json`` unless the options
name some; every target must then be a registry.

Dask (the ``distributed`` package, the ``dask`` extra) is imported only when a scheduler is used.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from .convert import ConvertOptions, ConvertResult, Converter, LayerJob, LayerResult, convert_layer
from .layout import digest_hex

MAX_LIST_LINES = 100_000           # pairs one list may name
IMAGES_AT_ONCE = 4                 # images planned and finished concurrently by the client


@dataclass(frozen=True)
class ConvertPair:
    """One line of a ``--from-list`` file."""

    source: str
    target: str
    line: int


def read_pairs(path: str) -> list[ConvertPair]:
    """The source/target pairs of a ``--from-list`` file (errors name the file and line)."""
    pairs = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, text in enumerate(f, 1):
                if number > MAX_LIST_LINES:
                    raise InvalidArgumentError(f"{path}: more than {MAX_LIST_LINES} lines")
                text = text.split("#", 1)[0].strip() if text.lstrip().startswith("#") else text.strip()
                if not text:
                    continue
                words = text.split()
                if len(words) != 2:
                    raise InvalidArgumentError(f"{path}:{number}: expected 'SOURCE TARGET', got {len(words)} "
                                               "words")
                pairs.append(ConvertPair(words[0], words[1], number))
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise InvalidArgumentError(f"{path}: cannot read the list ({exc.strerror})") from None
    if not pairs:
        raise InvalidArgumentError(f"{path}: the list names no image")
    return pairs


def remote_layer(job: LayerJob) -> tuple[str, int, bytes]:
    """Run on a Dask worker: convert one layer in a private directory (the worker's own disk), push
    the blob (``job.push_to``), and return (blob digest, size, the layer's bootstrap)."""
    work = tempfile.mkdtemp(prefix="rafs-layer-")
    try:
        local = dataclasses.replace(job, blob_dir=work, work_dir=work, threads=os.cpu_count() or 1)
        result = convert_layer(local)
        with open(result.bootstrap, "rb") as f:
            return result.digest, result.size, f.read()
    finally:
        shutil.rmtree(work, ignore_errors=True)


class DaskLayerRunner:
    """A ``layer_runner`` for :class:`~rafs.oci.convert.Converter` that submits each layer to a Dask
    distributed ``Client``."""

    def __init__(self, client):
        self.client = client

    def __call__(self, jobs: dict[str, LayerJob], ticker, work: str) -> dict[str, LayerResult]:
        from distributed import as_completed
        run = uuid.uuid4().hex[:12]
        futures = {self.client.submit(remote_layer, job, key=f"rafs-layer-{digest_hex(d)[:16]}-{run}", pure=False):
                   d for d, job in jobs.items()}
        results: dict[str, LayerResult] = {}
        try:
            for future in as_completed(list(futures), loop=self.client.loop):
                source_digest = futures[future]
                digest, size, bootstrap = future.result()
                path = os.path.join(work, digest_hex(digest))
                with open(path, "wb") as f:
                    f.write(bootstrap)
                results[source_digest] = LayerResult(source_digest, digest, size, path)
                ticker.advance(jobs[source_digest].source.size)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return results


def connect(scheduler: str):
    """A Dask distributed client of the scheduler at ``scheduler``; a clear error when Dask is not
    installed or the scheduler does not answer."""
    try:
        from distributed import Client
    except ImportError:
        raise InvalidArgumentError("--scheduler needs Dask: pip install 'rafs[dask]'") from None
    try:
        return Client(scheduler, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise InvalidArgumentError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc})") from None


def convert_pair(pair: ConvertPair, options: ConvertOptions, *, source_options: dict, target_options: dict,
                 layer_runner=None, work_dir: str | None = None) -> tuple[ConvertPair, ConvertResult, str | None]:
    """Convert one pair (either side a layout or a reference); (pair, result, pushed digest or None)."""
    from .reference import is_reference
    from .registry_transfer import push
    from .registry_source import RegistryEndpoint, RegistryLayout
    source = RegistryLayout(pair.source, source_options) if is_reference(pair.source) else pair.source
    if not is_reference(pair.target):
        if layer_runner is not None:
            raise InvalidArgumentError(f"line {pair.line}: with --scheduler every target must be a registry "
                                       "(docker://HOST/REPO:TAG): the workers push the blobs themselves")
        return pair, Converter(source, pair.target, dataclasses.replace(options)).run(), None
    scratch = tempfile.mkdtemp(prefix="rafs-convert-target-", dir=work_dir)
    try:
        layout = os.path.join(scratch, "target")
        converter = Converter(source, layout, dataclasses.replace(options),
                              push_to=RegistryEndpoint(pair.target, dict(target_options)),
                              layer_runner=layer_runner)
        result = converter.run()
        mount_from = same_registry_repo(pair.source, pair.target)
        digest = push(layout, pair.target, dict(target_options), mount_from=mount_from)
        return pair, result, digest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def same_registry_repo(source: str, target: str) -> str | None:
    """The source repository when source and target are in one registry (its blobs can be mounted)."""
    from .reference import is_reference, parse_reference
    if not (is_reference(source) and is_reference(target)):
        return None
    a, b = parse_reference(source), parse_reference(target)
    return a.repo if a.host == b.host and a.repo != b.repo else None


def convert_many(pairs: list[ConvertPair], options: ConvertOptions, *, scheduler: str | None = None,
                 source_options: dict | None = None, target_options: dict | None = None,
                 work_dir: str | None = None, on_done=None):
    """Convert every pair, a few images at once; ``on_done(pair, result, digest)`` is called as each
    finishes. With ``scheduler`` the layers run on that Dask cluster. Returns the results in list
    order; the first failure stops the rest and is raised."""
    client = connect(scheduler) if scheduler else None
    runner = DaskLayerRunner(client) if client is not None else None
    try:
        at_once = IMAGES_AT_ONCE if client is not None else 1
        with concurrent.futures.ThreadPoolExecutor(max_workers=at_once) as pool:
            futures = [pool.submit(convert_pair, pair, options, source_options=source_options or {},
                                   target_options=target_options or {}, layer_runner=runner, work_dir=work_dir)
                       for pair in pairs]
            try:
                for future in concurrent.futures.as_completed(futures):
                    done = future.result()
                    if on_done is not None:
                        on_done(*done)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            return [future.result() for future in futures]
    finally:
        if client is not None:
            client.close()
