"""The packaged search spaces (``<benchmark>.yaml``, ``default.yaml``), installed as the package
``study.search_spaces`` and read through ``importlib.resources`` (see pyproject.toml's package-dir).
This file makes the directory a regular package, which setuptools' editable installs need to map it."""
