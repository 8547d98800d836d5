"""The peers of the durable-work and workflow benches (issues 39 and 40): DBOS, Restate,
Temporal and Celery, each driven on the same shape as corral. Installed by setup.sh, never
by the test suite."""
