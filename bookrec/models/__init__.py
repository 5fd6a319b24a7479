"""Recommendation models: popularity, content, collaborative filtering and the served hybrid.

Import from the submodules (``bookrec.models.hybrid``, ``bookrec.models.persist``, ...);
this package imports nothing at import time so that ``bookrec --help`` stays instant.
"""
