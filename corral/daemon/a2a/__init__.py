"""A2A v1.0 (docs/a2a.md): every agent a caller may run served as an A2A agent at
`/a2a/AGENT` on the [http] listener. The bindings read their wire into the one door
(door.py), which calls the Dispatcher as REST does, and write its answer back."""
