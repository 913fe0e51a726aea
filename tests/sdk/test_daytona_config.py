"""DaytonaBackend as configuration: validation, to_dict/from_dict for fleet jobs, CLI parsing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rho_agent.backends.daytona.backend import DaytonaBackend
from rho_agent.errors import ConfigError
from rho_agent.testing.fake_daytona import FakeDaytonaServer


def test_to_dict_is_json_and_round_trips() -> None:
    template = DaytonaBackend(
        image="python:3.12",
        resources={"cpu": 2, "memory": 4},
        env_vars={"MODE": "ci"},
        forward_env=["GITHUB_TOKEN"],
        uploads={"./src": "/home/daytona/src"},
        setup_commands=["pip install -e ."],
        working_dir="/home/daytona/src",
        auto_stop_interval=20,
        auto_delete_interval=-1,
        labels={"team": "a"},
        create_timeout=120,
        setup_timeout=60,
    )
    data = json.loads(json.dumps(template.to_dict()))
    assert data["version"] == 1
    assert data["uploads"] == [{"local": "./src", "remote": "/home/daytona/src"}]
    assert data["resources"] == {"cpu": 2, "memory": 4, "disk": None, "gpu": None}
    again = DaytonaBackend.from_dict(data)
    assert again.to_dict() == data
    assert again.working_dir == "/home/daytona/src"


def test_credentials_never_reach_the_data_or_the_repr() -> None:
    from daytona import DaytonaConfig

    config = DaytonaConfig(api_key="dtn_secret_value", api_url="https://example.invalid/api")
    template = DaytonaBackend(snapshot="base", daytona_config=config)
    shown = json.dumps(template.to_dict()) + repr(template) + repr(template.for_session())
    assert "dtn_secret_value" not in shown
    assert "daytona_config" not in template.to_dict()


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"auto_stop_interval": -1}, "auto_stop_interval"),
        ({"auto_delete_interval": -2}, "auto_delete_interval"),
        ({"image": "a", "snapshot": "b"}, "image and snapshot"),
        ({"snapshot": "b", "resources": {"cpu": 2}}, "resources need an image"),
        ({"resources": {"cpu": 0}, "image": "a"}, "resources.cpu"),
        ({"env_vars": {"BAD-NAME": "x"}}, "'BAD-NAME' is not a valid environment variable"),
        ({"forward_env": ["1X"]}, "'1X' is not a valid"),
        ({"setup_commands": ["  "]}, "empty commands"),
        ({"create_timeout": 0}, "create_timeout"),
        ({"api_key": "x"}, "api_key"),
        ({"version": 2}, "version"),
    ],
)
def test_bad_data_names_the_field(data: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as caught:
        DaytonaBackend.from_dict(data)
    assert "DaytonaBackend.from_dict()" in str(caught.value)


def test_constructor_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"DaytonaBackend\(\.\.\.\).*auto_stop_interval"):
        DaytonaBackend(auto_stop_interval=-5)
    with pytest.raises(ConfigError, match=r"image name or a daytona\.Image"):
        DaytonaBackend(image=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="LOCAL:SANDBOX_PATH"):
        DaytonaBackend(uploads=["src:"])
    with pytest.raises(ConfigError, match="list of 'LOCAL:SANDBOX'"):
        DaytonaBackend(uploads="src:dst")


def test_uploads_accept_every_documented_form(tmp_path: Path) -> None:
    forms = DaytonaBackend(
        uploads=["./src:/home/daytona/src", "data/", (tmp_path, "tmp"), ("a:b", "c")]
    ).to_dict()["uploads"]
    assert forms == [
        {"local": "./src", "remote": "/home/daytona/src"},
        {"local": "data/", "remote": "data"},
        {"local": str(tmp_path), "remote": "tmp"},
        {"local": "a:b", "remote": "c"},
    ]


def test_from_cli_parses_command_line_strings() -> None:
    backend = DaytonaBackend.from_cli(
        uploads=["./src:/home/daytona/src"],
        env=["DEBUG=1", "EMPTY=", "GITHUB_TOKEN"],
        setup=["pip install -e ."],
        image="python:3.12",
        auto_stop_interval=5,
    )
    data = backend.to_dict()
    assert data["env_vars"] == {"DEBUG": "1", "EMPTY": ""}
    assert data["forward_env"] == ["GITHUB_TOKEN"]
    assert data["setup_commands"] == ["pip install -e ."]
    assert (data["image"], data["auto_stop_interval"]) == ("python:3.12", 5)


def test_daytona_objects_are_accepted() -> None:
    from daytona import Image, Resources

    image = Image.base("python:3.12-slim").pip_install(["requests"])
    template = DaytonaBackend(image=image, resources=Resources(cpu=1, memory=2))
    data = template.to_dict()
    assert "pip install" in data["dockerfile"] and data["image"] is None
    assert data["resources"]["memory"] == 2


def test_an_image_with_local_files_cannot_travel_as_data(tmp_path: Path) -> None:
    from daytona import Image

    (tmp_path / "requirements.txt").write_text("requests\n")
    image = Image.base("python:3.12").pip_install_from_requirements(
        str(tmp_path / "requirements.txt")
    )
    with pytest.raises(ConfigError, match="snapshot"):
        DaytonaBackend(image=image).to_dict()


def test_copies_and_sessions_share_configuration_not_state() -> None:
    template = DaytonaBackend(snapshot="base", setup_commands=["make"])
    for other in (template.for_session(), copy.copy(template), copy.deepcopy(template)):
        assert other is not template
        assert other.to_dict() == template.to_dict()
        assert other.sandbox_id is None


async def test_a_dockerfile_from_data_is_built_as_an_image(
    fake_daytona: FakeDaytonaServer,
) -> None:
    from daytona import Image

    image = Image.base("python:3.12-slim").run_commands("echo built")
    data = json.loads(json.dumps(DaytonaBackend(image=image).to_dict()))
    async with DaytonaBackend.from_dict(data).for_session():
        pass
    dockerfile = fake_daytona.sandboxes[0].request["buildInfo"]["dockerfileContent"]
    assert "FROM python:3.12-slim" in dockerfile and "echo built" in dockerfile
