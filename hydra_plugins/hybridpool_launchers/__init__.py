"""hybridpool's Hydra launcher plugins (found by Hydra's plugin scan of the ``hydra_plugins`` namespace)."""
