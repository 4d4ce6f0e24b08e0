"""``python -m ImagInfoExtension``: the ``imaginfo`` command line (how Slicer modules run their jobs)."""

from ImagInfoExtension.cli import run

run()
