"""Every layer of a model: `plan` (with held-out scoring, topology, re-planning), the
re-planning of a served model, and the executors that run layers on workers."""
