"""Operating a fleet from the CLI: a local fleet of child processes, its status, and launching
a worker or Flower."""
