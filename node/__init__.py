"""Fugato: a Centrifugo-compatible real-time messaging node."""

__version__ = "0.1.0"
# What clients see in the connect reply and the API `info`: Centrifugo's "<semver> OSS" shape, so
# tooling that parses it keeps working.
VERSION_STRING = f"{__version__} OSS"
