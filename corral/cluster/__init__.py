"""The multi-node mode on Redis (docs/cluster.md): corral nodes share tasks through an
engine operators already run. docs/architecture.md maps its modules (node.py composes
them).
"""
