"""jailfarm.workers: the jail latent worker, worker templates, leases and the reaper."""
