"""The service around the engine: the daemon loop and its signals, the control socket and
its commands, logs, sd_notify, and the SQLite store. Nothing here is needed to embed the
engine (`corral.supervisor`) in a Python program."""
