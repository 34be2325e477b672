"""Serving images to the kernel: on-demand EROFS (:mod:`rafs.serve.ondemand`) and its guardian."""
