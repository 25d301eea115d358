"""jailfarm.provision: host plan/apply from farm.toml, and preflight (`jailfarm doctor`)."""
