"""rho-agent's benchmark suite (not collected by pytest): ``python tests/bench/run.py``."""
