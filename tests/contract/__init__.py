"""Contract tests every ExecutionBackend must pass (see backend_contract.py)."""
