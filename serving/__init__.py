"""The serving tier: a Flask app factory run by gunicorn (``bookrec serve``).

``create_app`` builds an app; nothing is created at import time.
"""

from serving.app import create_app

__all__ = ["create_app"]
