"""Energy-based model: the energy network, Langevin dynamics on the input, a loadable pipeline."""
