"""The deploy manifests parse, and every command, entry point and variable they use exists.

No container engine or cluster runs here, so the files are checked against the code instead:
CLI commands parse with the real CLI, console scripts come from pyproject.toml, environment
values build real WorkerSettings, variables appear in deploy/README.md's table, and the shutdown
and health settings agree with each manifest's timeouts and probes.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._deploy import (
    DEPLOY,
    REPO,
    SECRET_NAMES,
    check_worker_env,
    cli_accepts,
    console_scripts,
    documented,
    parse_env_file,
    seconds,
)

PROBE = ["python", "-m", "workers.health"]


def _probe_accepts(command: list[str]) -> None:
    from workers.health import main

    assert command[:3] == PROBE, command
    assert main([*command[3:], "--dir", str(REPO / "no-such-dir")]) == 1  # parses, finds no file


def assert_append_only_file(command: list[str]) -> None:
    """``command`` starts Redis with an append-only file fsynced every second, in ``/data``
    (the image's working directory, where the manifests mount a volume).

    Where redis-server is installed, the flags are also given to a real one, which must accept
    them and report ``appendonly yes``, ``appendfsync everysec``.
    """
    assert command[0] == "redis-server", command
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert (flags.get("--appendonly"), flags.get("--appendfsync")) == ("yes", "everysec")
    assert "--dir" not in flags or flags["--dir"] == "/data"
    if shutil.which("redis-server") is None:
        return
    import redis

    from tests.integration.fleet import free_port, wait_until

    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [*command, "--port", str(port), "--bind", "127.0.0.1", "--dir", data],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port, decode_responses=True)
            wait_until(lambda: _pings(client), 10, "redis-server with the manifest's flags")
            assert client.config_get("append*") == {
                "appendonly": "yes",
                "appendfsync": "everysec",
                "appendfilename": "appendonly.aof",
                "appenddirname": "appendonlydir",
            }
            client.close()
        finally:
            server.kill()
            server.wait(10)


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


# -- Docker ---------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "docker" / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split()[0].upper(), line.partition(" ")[2].strip())
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_runs_rho_agent_as_a_non_root_user() -> None:
    instructions = _dockerfile()
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    entrypoint = yaml.safe_load(next(arg for op, arg in final if op == "ENTRYPOINT"))
    command = yaml.safe_load(next(arg for op, arg in final if op == "CMD"))
    assert entrypoint[-1] in console_scripts() and entrypoint[:2] == ["tini", "--"]
    cli_accepts(command)
    user = [arg for op, arg in final if op == "USER"]
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"
    for op, arg in instructions:
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such file in the repo"
        if op == "ENV":
            for name in re.findall(r"(\w+)=", arg):
                assert name in documented() or name == "PYTHONUNBUFFERED", name


def test_the_images_usage_comments_are_real_commands() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text(encoding="utf-8").replace("\\\n#", " ")
    runs = re.findall(r"rho-agent:latest ([a-z][^\n]*)", text)
    assert runs, "the Dockerfile should show how to run a worker, Flower and the CLI"
    for run in runs:
        cli_accepts(_strip_placeholders(shlex.split(run)))


def _strip_placeholders(args: list[str]) -> list[str]:
    return [arg for arg in args if arg != "..."]


# -- Compose --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        (DEPLOY / "compose" / "docker-compose.yml").read_text(encoding="utf-8")
    )
    return data


def test_compose_runs_persistent_redis_scalable_workers_and_flower(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "worker", "flower"}
    redis = services["redis"]
    assert_append_only_file(redis["command"])
    assert "redis-data" in compose["volumes"]
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service.get("restart") == "unless-stopped", name
    worker = services["worker"]
    assert worker["deploy"]["replicas"] >= 2 and "container_name" not in worker  # scalable
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    build = worker["build"]
    assert (DEPLOY / "compose" / build["context"] / build["dockerfile"]).exists()


def test_compose_commands_and_settings_exist_in_the_code(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env_file = parse_env_file(DEPLOY / "compose" / ".env.example")
    for name in ("worker", "flower"):
        service = services[name]
        cli_accepts(service["command"])
        env = {**env_file, **{key: str(value) for key, value in service["environment"].items()}}
        for variable in env:
            assert variable in documented(), f"{name}: {variable} is not in deploy/README.md"
        check_worker_env(env)
    _probe_accepts(services["worker"]["healthcheck"]["test"][1:])
    grace = float(services["worker"]["environment"]["RHO_AGENT_SHUTDOWN_GRACE"])
    assert seconds(services["worker"]["stop_grace_period"]) >= grace + 15
    assert services["worker"]["stop_signal"] == "SIGTERM"


def test_compose_flower_needs_basic_auth_and_stays_on_localhost(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    auth = flower["environment"]["FLOWER_BASIC_AUTH"]
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", auth), "Flower must not start open"
    assert all(str(port).startswith("127.0.0.1:") for port in flower["ports"])
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])
    assert "env_file" not in flower, "Flower needs none of the workers' secrets"


def test_compose_secrets_come_from_an_uncommitted_env_file(compose: dict[str, Any]) -> None:
    assert compose["services"]["worker"]["env_file"] == [".env"]
    assert ".env" in (DEPLOY / "compose" / ".gitignore").read_text(encoding="utf-8").split()
    example = parse_env_file(DEPLOY / "compose" / ".env.example")
    assert "OPENAI_API_KEY" in example and "FLOWER_BASIC_AUTH" in example


# -- Kubernetes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object under deploy/k8s by (kind, name)."""
    objects = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document and document.get("kind") != "Kustomization":
                objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _config(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    data = k8s[("ConfigMap", "rho-agent-config")]["data"]
    return {key: str(value) for key, value in data.items()}


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}
    if shutil.which("kubectl"):  # the real renderer, where it is installed
        render = ["kubectl", "kustomize", str(DEPLOY / "k8s")]
        subprocess.run(render, check=True, capture_output=True, timeout=30)


def test_the_worker_deployment_drains_within_its_grace_and_has_probes(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    worker = k8s[("Deployment", "rho-agent-worker")]
    pod = worker["spec"]["template"]["spec"]
    config = _config(k8s)
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= float(config["RHO_AGENT_JOB_TIME_LIMIT"]), "shorter than the job time limit"
    assert grace >= float(config["RHO_AGENT_SHUTDOWN_GRACE"]) + 30
    container = _container(worker)
    cli_accepts(container["args"])
    _probe_accepts(container["readinessProbe"]["exec"]["command"])
    assert "--ready" in container["readinessProbe"]["exec"]["command"]
    _probe_accepts(container["livenessProbe"]["exec"]["command"])
    interval = float(config["RHO_AGENT_HEARTBEAT_INTERVAL"])
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > 3 * interval + 5
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_k8s_environment_exists_in_the_code_and_builds_worker_settings(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    config = _config(k8s)
    secret = k8s[("Secret", "rho-agent-secrets")]["stringData"]
    for name in ("rho-agent-worker", "rho-agent-flower"):
        container = _container(k8s[("Deployment", name)])
        assert container["envFrom"] == [{"configMapRef": {"name": "rho-agent-config"}}]
        env = dict(config)
        for item in container.get("env", []):
            source = item.get("valueFrom", {})
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                assert ref["name"] == "rho-agent-secrets" and ref["key"] in secret, item
            env[item["name"]] = "from-the-cluster"
        for variable in env:
            assert variable in documented(), f"{name}: {variable} is not in deploy/README.md"
        check_worker_env(env)
    flower = _container(k8s[("Deployment", "rho-agent-flower")])
    cli_accepts(flower["args"])
    assert flower["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert any(item["name"] == "FLOWER_BASIC_AUTH" for item in flower["env"])


def test_k8s_redis_persists_and_services_select_their_pods(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    redis = k8s[("StatefulSet", "rho-agent-redis")]
    assert_append_only_file(_container(redis)["args"])
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    mounts = {mount["name"]: mount["mountPath"] for mount in _container(redis)["volumeMounts"]}
    assert mounts["data"] == "/data", "the append-only file lives on the claimed volume"
    assert _config(k8s)["RHO_AGENT_BROKER_URL"].startswith("redis://rho-agent-redis:6379/")
    for (kind, name), service in k8s.items():
        if kind != "Service":
            continue
        pods = [
            obj["spec"]["template"]["metadata"]["labels"]
            for obj in k8s.values()
            if obj["kind"] in ("Deployment", "StatefulSet")
        ]
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pods), name


# -- systemd --------------------------------------------------------------------------------------


def _unit(name: str) -> dict[str, list[str]]:
    """``Key=value`` settings of a unit file (repeated keys keep every value)."""
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("name", ["rho-agent-worker@.service", "rho-agent-flower.service"])
def test_systemd_units_run_real_commands_and_restart(name: str) -> None:
    unit = _unit(name)
    program, *args = shlex.split(unit["ExecStart"][0])
    assert Path(program).name in console_scripts()
    cli_accepts(args)
    assert unit["Restart"][0] in ("always", "on-failure")
    assert unit["User"] == ["rho-agent"]
    env = parse_env_file(DEPLOY / "systemd" / "fleet.env.example")
    for setting in unit.get("Environment", []):
        key, _, value = setting.partition("=")
        env[key] = value
    for variable in env:
        assert variable in documented(), f"{name}: {variable} is not in deploy/README.md"
    check_worker_env(env)


def test_the_systemd_worker_drains_and_feeds_the_watchdog() -> None:
    unit = _unit("rho-agent-worker@.service")
    env = parse_env_file(DEPLOY / "systemd" / "fleet.env.example")
    assert (unit["Type"], unit["NotifyAccess"]) == (["notify"], ["main"])
    assert seconds(unit["WatchdogSec"][0]) > 3 * float(env["RHO_AGENT_HEARTBEAT_INTERVAL"])
    assert seconds(unit["TimeoutStopSec"][0]) >= float(env["RHO_AGENT_SHUTDOWN_GRACE"]) + 15
    assert unit["KillSignal"] == ["SIGTERM"] and unit["KillMode"] == ["mixed"]
    flower = _unit("rho-agent-flower.service")
    assert "--address 127.0.0.1" in flower["ExecStart"][0]
    flower_env = parse_env_file(DEPLOY / "systemd" / "flower.env.example")
    assert "FLOWER_BASIC_AUTH" in flower_env


# -- one machine ----------------------------------------------------------------------------------


def test_the_local_demo_script_parses_and_uses_real_commands() -> None:
    script = DEPLOY / "local" / "demo.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text(encoding="utf-8").replace("\\\n", " ")
    commands = re.findall(r"^\s*rho-agent ([^\n>&|]+)", text, re.MULTILINE)
    assert len(commands) >= 3
    for command in commands:
        cli_accepts(["1" if arg.startswith("$") else arg for arg in shlex.split(command)])
    for module in re.findall(r"python -m ([\w.]+)", text):
        assert __import__("importlib").util.find_spec(module), module


def test_the_demo_batch_loads() -> None:
    from dispatch.batch import load_batch
    from rho_agent import AgentConfig

    specs = load_batch(DEPLOY / "local" / "demo-batch.yaml", AgentConfig())
    assert len(specs) == 4 and all(spec.model == "scripted" for spec in specs)


def _shell_commands(markdown: str) -> list[list[str]]:
    """``rho-agent ...`` lines of the bash blocks, as argument lists (comments and ``&`` cut)."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, re.DOTALL)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [
        shlex.split(line.removeprefix("rho-agent ").rstrip("&").strip())
        for line in lines
        if line.startswith("rho-agent ")
    ]


def test_every_rho_agent_command_in_the_deploy_readme_is_real() -> None:
    commands = _shell_commands((DEPLOY / "README.md").read_text(encoding="utf-8"))
    assert len(commands) >= 3
    for command in commands:
        cli_accepts(command)


def test_the_readmes_run_a_fleet_section_uses_real_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Run a fleet\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md needs its 'Run a fleet' section"
    commands = _shell_commands(match.group(1))
    assert {"worker", "flower", "dispatch"} <= {command[0] for command in commands}
    for command in commands:
        cli_accepts(command)
    assert "deploy/README.md" in match.group(1)


# -- secrets --------------------------------------------------------------------------------------


def test_no_secret_value_is_committed() -> None:
    for path in DEPLOY.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"sk-[A-Za-z0-9]{16,}", text), f"{path}: looks like an API key"
        if path.name.endswith(".example"):
            for name, value in parse_env_file(path).items():
                assert not (SECRET_NAMES.search(name) and value), f"{path}: {name} has a value"
    assert not (DEPLOY / "compose" / ".env").exists() or _ignored(DEPLOY / "compose" / ".env")
    example = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text(encoding="utf-8"))
    assert example["stringData"] and set(example["stringData"].values()) == {""}


def _ignored(path: Path) -> bool:
    return path.name in (path.parent / ".gitignore").read_text(encoding="utf-8").split()
