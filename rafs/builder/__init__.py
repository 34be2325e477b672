"""The write side: sources into :class:`~rafs.model.Node` trees, trees into RAFS bootstraps and blobs.

``builder.py`` (:class:`rafs.Builder`) orchestrates a build and ``merge.py`` a merge; the pieces both
use have one module each: ``outputs.py`` (atomic output files), ``report.py`` (results and the
``--output-json`` document), ``prefetch.py`` (the prefetch-pattern matcher), ``writers.py`` (the v5 or
v6 bootstrap writer), ``parent.py`` (existing bootstraps: a parent image, a chunk dictionary),
``tree.py`` and ``overlay.py`` (numbering, whiteouts, layering). Sources: ``directory.py`` and
``tar.py`` (over ``stream.py`` and ``tarstream.py``).
"""
