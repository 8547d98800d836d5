"""`corral import`: another supervisor's file (supervisord, PM2, a Procfile, systemd
units) as corral's agent tables, and a line for each setting that could not be carried
over and why (docs/migrating.md)."""
