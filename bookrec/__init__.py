"""bookrec: the domain package (cleaning, models, metrics, artifact format, stores).

Nothing here imports Prefect, Flask, or the flows/tasks/serving packages.
"""

__version__ = "0.1.0"
