"""jailfarm.master: Buildbot wiring built from farm.toml, custom steps, schedulers, the planner."""
