"""Agent packages (docs/packages.md): the manifest, uv builds of immutable releases, and
the service that deploys them and keeps them."""
