"""EBM worker: loads the energy network once and runs Langevin sampling jobs."""
