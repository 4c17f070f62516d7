"""``python -m node``: the same command line as the ``fugato`` console script."""

from node.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
