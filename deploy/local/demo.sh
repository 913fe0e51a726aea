#!/usr/bin/env bash
# A whole rho-agent fleet on this machine, no API key needed: a scripted model answers.
#
#   deploy/local/demo.sh
#
# Needs redis-server on PATH (or a Redis on REDIS_PORT) and `pip install 'rho-agent[fleet]'`.
# It starts the scripted model, `rho-agent fleet up` (Redis, 2 workers, Flower), dispatches
# deploy/local/demo-batch.yaml, shows `rho-agent fleet status`, and stops everything on Enter.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
redis_port="${REDIS_PORT:-6390}"
flower_port="${FLOWER_PORT:-5556}"
broker="redis://127.0.0.1:${redis_port}/0"
run_dir="$(mktemp -d -t rho-fleet-demo-XXXXXX)"
export OPENAI_API_KEY="${OPENAI_API_KEY:-scripted-model-needs-no-key}"
# The batch names the scripted model's endpoint: the workers send their key only to allowed ones.
export RHO_AGENT_ALLOWED_BASE_URLS="http://127.0.0.1:8765/v1"

model_pid=""
fleet_pid=""
cleanup() {
    if [[ -n "$fleet_pid" ]]; then kill -TERM "$fleet_pid" 2>/dev/null || true; wait "$fleet_pid" || true; fi
    if [[ -n "$model_pid" ]]; then kill -TERM "$model_pid" 2>/dev/null || true; wait "$model_pid" || true; fi
}
trap cleanup EXIT

python -m rho_agent.testing.model_server --port 8765 --behaviour tool-then-answer \
    > "$run_dir/model.log" 2>&1 &
model_pid=$!

rho-agent fleet up --workers 2 --redis-port "$redis_port" --flower-port "$flower_port" \
    --run-dir "$run_dir" > "$run_dir/fleet.out" 2>&1 &
fleet_pid=$!
for _ in $(seq 120); do
    grep -q "fleet is up" "$run_dir/fleet.out" && break
    kill -0 "$fleet_pid" 2>/dev/null || { cat "$run_dir/fleet.out"; exit 1; }
    sleep 0.5
done
cat "$run_dir/fleet.out"

rho-agent dispatch "$here/demo-batch.yaml" --broker "$broker" --output "$run_dir/results.jsonl"
rho-agent fleet status --broker "$broker"
echo
echo "results: $run_dir/results.jsonl"
echo "Flower:  http://127.0.0.1:${flower_port}"
read -r -p "Press Enter to stop the fleet... " _ || true
