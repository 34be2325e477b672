"""Property-based format fuzzing for RAFS, public and reusable.

For rafs' own tests and for anyone testing another RAFS (or EROFS) implementation. Depends only on
hypothesis and rafs.

* :mod:`rafs.testing.trees` - source trees as plain data (``{path: Entry}``); hypothesis strategies for
  them in :mod:`rafs.testing.tree_strategies` (every entry type, hostile and non-UTF-8 names, xattrs,
  hardlinks, sparse and chunk-boundary sizes); :mod:`rafs.testing.tree_io` (:func:`materialise` to a
  real directory, :func:`to_node` for the model, read-back from a directory or an image) and
  :mod:`rafs.testing.tree_diff` (:func:`diff_trees` to compare).
* :mod:`rafs.testing.images` - build options (version, compressor, digester, chunk size, inline
  meta, blob ToC) as a strategy of ``rafs.Builder`` keyword arguments; images built from trees.
* :mod:`rafs.testing.schemas` - strategies derived from construct schemas, and discovery of every
  schema in the ``layout`` modules.
* :mod:`rafs.testing.mutate` - blind and structure-aware mutations of images, decompression bombs.
* :mod:`rafs.testing.exercise` - run every read path over an image under time and memory bounds.
* :mod:`rafs.testing.blob_ids` - valid and hostile blob ids as strategies, and :func:`with_blob_ids` to
  write any id into a v5 or v6 bootstrap's blob table.
* :mod:`rafs.testing.hostile_images` - images that lie about their shape: deep directory chains, files
  declaring sizes their chunks do not cover, and a strategy of such sizes.
* :mod:`rafs.testing.hostile` - what an attacker controls: tar headers declaring huge sizes, file
  sizes past their chunks, deep directory chains, hostile HTTP servers, configs, OCI layouts.

See ``docs/fuzzing.md`` for a guide with a worked example.
"""

from .blob_ids import blob_id_strings, hostile_blob_ids, valid_blob_ids, with_blob_ids
from .exercise import (BytesSource, EscapedError, Outcome, OutOfMemoryError, OutOfTimeError, check_blob_mutant,
                       check_mutant, exercise, exercise_blob, memory_budget, memory_limit, time_limit)
from .hostile import (CONFIG_SEEDS, HostileHTTPServer, config_mutants, declared_size_mutants, declared_sizes,
                      deep_chain, http_behaviours, mutated_layout, oci_layout_mutants, oci_layout_mutations,
                      tar_header, tar_header_bombs, tar_header_mutants, tar_sizes)
from .images import Built, as_built, blob_devices, build_node, build_options, build_tree
from .mutate import (Located, bit_flips, blob_structures, field_extremes, flip_bit, replace_unique, set_field,
                     set_int, truncations, v5_structures, v6_structures, word_extremes, zeroed_runs, zstd_bomb)
from .schemas import from_schema, layout_schemas, schema_bytes, schemas_in
from .tree_diff import assert_same_tree, diff_trees
from .tree_io import materialise, node, to_node, tree_from_directory, tree_from_image
from .tree_strategies import file_data, hostile_names, names, trees
from .trees import Entry, Extent, FileData, directory, file, hardlink, symlink

__all__ = [
    "blob_id_strings", "hostile_blob_ids", "valid_blob_ids", "with_blob_ids",
    "BytesSource", "EscapedError", "Outcome", "OutOfMemoryError", "OutOfTimeError", "check_blob_mutant",
    "check_mutant", "exercise", "exercise_blob", "memory_budget", "memory_limit", "time_limit",
    "CONFIG_SEEDS", "HostileHTTPServer", "config_mutants", "declared_size_mutants", "declared_sizes",
    "deep_chain", "http_behaviours", "mutated_layout", "oci_layout_mutants", "oci_layout_mutations",
    "tar_header", "tar_header_bombs", "tar_header_mutants", "tar_sizes",
    "Built", "as_built", "blob_devices", "build_node", "build_options", "build_tree",
    "Located", "bit_flips", "blob_structures", "field_extremes", "flip_bit", "replace_unique", "set_field",
    "set_int", "truncations", "v5_structures", "v6_structures", "word_extremes", "zeroed_runs", "zstd_bomb",
    "from_schema", "layout_schemas", "schema_bytes", "schemas_in",
    "Entry", "Extent", "FileData", "assert_same_tree", "diff_trees", "directory", "file", "file_data",
    "hardlink", "hostile_names", "materialise", "names", "node", "symlink", "to_node", "tree_from_directory",
    "tree_from_image", "trees",
]
