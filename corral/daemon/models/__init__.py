"""The model gateway (docs/models.md): the providers' model APIs served to agents with
corral's keys, each call of a task's attempt a step of it."""
