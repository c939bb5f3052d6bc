"""The version of gradlens (one home: the package, the manifests and the CLI read it here)."""

__version__ = "0.1.0"
