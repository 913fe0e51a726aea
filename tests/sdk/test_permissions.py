"""Permission profiles: built-ins, YAML files, validation, approval and ceilings."""

from __future__ import annotations

from pathlib import Path

import pytest

from rho_agent.errors import ProfileError
from rho_agent.permissions.profile import (
    BUILTIN_PROFILES,
    BUILTIN_TOOL_NAMES,
    PermissionProfile,
    load_profile,
    profile_from_dict,
    profile_to_dict,
)
from rho_agent.testing import ScriptedModelServer, text, tool_call
from rho_agent.tools import build_registry, tool
from tests.sdk.helpers import make_session


def test_builtin_profiles() -> None:
    assert list(BUILTIN_PROFILES) == ["readonly", "developer", "unrestricted"]
    readonly, developer, unrestricted = BUILTIN_PROFILES.values()
    assert (readonly.shell, readonly.write) == ("readonly", "none")
    assert (developer.shell, developer.write) == ("allowed", "working_dir")
    assert (unrestricted.shell, unrestricted.write) == ("allowed", "anywhere")
    with pytest.raises(TypeError):
        BUILTIN_PROFILES["mine"] = readonly  # type: ignore[index]


def test_load_profile_by_name_object_and_default() -> None:
    assert load_profile("developer") is BUILTIN_PROFILES["developer"]
    custom = PermissionProfile("custom")
    assert load_profile(custom) is custom
    assert load_profile(None) is BUILTIN_PROFILES["readonly"]


def test_unknown_profile_lists_the_valid_ones() -> None:
    with pytest.raises(ProfileError) as raised:
        load_profile("admin")
    message = str(raised.value)
    assert "'admin'" in message
    assert "readonly, developer, unrestricted" in message and ".yaml" in message


def test_profile_of_the_wrong_type() -> None:
    with pytest.raises(ProfileError, match="got int"):
        load_profile(3)  # type: ignore[arg-type]


def test_yaml_profile(tmp_path: Path) -> None:
    path = tmp_path / "auditor.yaml"
    path.write_text(
        "shell: none\nwrite: working_dir\nread: working_dir\napproval: [write]\n"
        "shell_timeout: 30\ntools: [read, write, grep]\n"
    )
    profile = load_profile(str(path))
    assert profile == PermissionProfile(
        name="auditor",
        shell="none",
        write="working_dir",
        read="working_dir",
        approval=frozenset({"write"}),
        shell_timeout=30.0,
        tools=frozenset({"read", "write", "grep"}),
    )
    assert build_registry(profile).names == ["read", "write", "grep"]


def test_yaml_profile_name_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text("name: careful\n")
    profile = load_profile(str(path))
    assert (profile.name, profile.shell, profile.write) == ("careful", "readonly", "none")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_profile(str(empty)) == PermissionProfile("empty")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("shell: sometimes\n", "field 'shell'"),
        ("write: everywhere\n", "field 'write'"),
        ("shell_timeout: 0\n", "field 'shell_timeout'"),
        ("tools: [read, deploy]\n", "unknown built-in tool(s) deploy"),
        ("shel: none\n", "unknown field 'shel'"),
        ("- shell\n", "must hold a mapping"),
        ("shell: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_the_field_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as raised:
        load_profile(str(path))
    assert message in str(raised.value)
    assert str(path) in str(raised.value)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read permission profile file"):
        load_profile(str(tmp_path / "absent.yaml"))


def test_a_yaml_file_that_is_not_utf8_is_a_profile_error(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ProfileError, match="not UTF-8") as raised:
        load_profile(str(latin1))
    assert str(latin1) in str(raised.value)


def test_dict_round_trip() -> None:
    for profile in [*BUILTIN_PROFILES.values(), PermissionProfile("x", tools=frozenset({"read"}))]:
        assert profile_from_dict(profile_to_dict(profile)) == profile


def test_from_dict_errors_name_the_source() -> None:
    with pytest.raises(ProfileError, match="job spec: field 'read'"):
        profile_from_dict({"name": "x", "read": "nowhere"}, source="job spec")


def test_constructor_validates_and_normalises() -> None:
    profile = PermissionProfile("x", approval=["bash"], tools=["read"])  # type: ignore[arg-type]
    assert profile.approval == frozenset({"bash"})
    assert profile.tools == frozenset({"read"})
    with pytest.raises(ProfileError, match="field 'shell'"):
        PermissionProfile("x", shell="yes")  # type: ignore[arg-type]
    with pytest.raises(ProfileError, match=r"write \['bash'\]"):
        PermissionProfile("x", approval="bash")  # type: ignore[arg-type]


def test_needs_approval() -> None:
    @tool
    def harmless() -> str:
        """Do nothing."""
        return ""

    @tool(requires_approval=True)
    def risky() -> str:
        """Do something risky."""
        return ""

    developer = load_profile("developer")
    bash = build_registry(developer).get("bash")
    read = build_registry(developer).get("read")
    assert bash is not None and read is not None
    assert developer.needs_approval(bash)
    assert not developer.needs_approval(read)
    assert not developer.needs_approval(harmless)
    assert developer.needs_approval(risky)
    assert not load_profile("readonly").needs_approval(bash)


def test_exceeds_a_ceiling() -> None:
    readonly, developer, unrestricted = BUILTIN_PROFILES.values()
    assert readonly.exceeds(developer) == []
    assert developer.exceeds(unrestricted) == []
    assert developer.exceeds(readonly) == [
        "shell: 'allowed' is more than 'readonly'",
        "write: 'working_dir' is more than 'none'",
        "network: 'all' is more than 'none'",
    ]
    slow = PermissionProfile("slow", shell_timeout=600)
    assert slow.exceeds(readonly) == ["shell_timeout: 600 s is more than 120 s"]
    narrow = PermissionProfile("narrow", tools=frozenset({"read", "grep"}))
    assert readonly.exceeds(narrow) == ["tools: bash, glob, list not allowed"]
    assert PermissionProfile("r", tools=frozenset({"read"})).exceeds(narrow) == []


def test_network_defaults_follow_what_bash_may_write() -> None:
    readonly, developer, unrestricted = BUILTIN_PROFILES.values()
    assert (readonly.network, readonly.bash_network) == (None, "none")
    assert developer.bash_network == unrestricted.bash_network == "all"
    assert PermissionProfile("w", shell="allowed", write="none").bash_network == "none"
    assert (
        PermissionProfile("d", shell="allowed", write="working_dir", network="inet").bash_network
        == "inet"
    )


def test_yaml_network_and_env(tmp_path: Path) -> None:
    path = tmp_path / "analyst.yaml"
    path.write_text(
        "shell: allowed\nwrite: working_dir\nnetwork: inet\nenv: [PGHOST, DEBUG, PGHOST]\n"
    )
    profile = load_profile(str(path))
    assert (profile.network, profile.env) == ("inet", ("DEBUG", "PGHOST"))
    assert profile_from_dict(profile_to_dict(profile)) == profile
    assert "network" not in profile_to_dict(BUILTIN_PROFILES["readonly"])
    assert "env" not in profile_to_dict(BUILTIN_PROFILES["readonly"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"network": "tcp"}, "field 'network'"),
        ({"env": ["OPENAI_API_KEY"]}, "OPENAI_API_KEY look like secrets"),
        ({"env": ["REDIS_URL"]}, "REDIS_URL look like secrets"),
        ({"env": ["NOT A NAME"]}, "field 'env.0'"),
        ({"env": "DEBUG"}, "field 'env'"),
    ],
)
def test_bad_network_or_env_names_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        profile_from_dict({"name": "p", **data}, source="job spec")


def test_a_string_env_is_refused_by_the_constructor() -> None:
    with pytest.raises(ProfileError, match="collection of variable names"):
        PermissionProfile("p", env="DEBUG")  # type: ignore[arg-type]


def test_network_and_env_count_against_a_ceiling() -> None:
    developer = BUILTIN_PROFILES["developer"]
    inet = PermissionProfile("i", shell="allowed", write="working_dir", network="inet")
    assert inet.exceeds(developer) == []
    assert developer.exceeds(inet) == ["network: 'all' is more than 'inet'"]
    wants_env = PermissionProfile("e", env=("DEBUG", "PGHOST"))
    ceiling = PermissionProfile("c", env=("DEBUG",))
    assert wants_env.exceeds(ceiling) == ["env: PGHOST not passed to tools by this worker"]
    assert ceiling.exceeds(wants_env) == []


def test_builtin_tool_names_match_the_handlers() -> None:
    assert build_registry("unrestricted").names == list(BUILTIN_TOOL_NAMES)
    for profile in BUILTIN_PROFILES.values():
        assert build_registry(profile).names == profile.builtin_tools()


async def test_a_denied_call_becomes_tool_blocked_in_a_session(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    model_server.script(
        tool_call("bash", {"command": "rm keep.txt"}),
        tool_call("write", {"path": "keep.txt", "content": "gone"}),
        tool_call("bash", {"command": "cat keep.txt"}),
        text("done"),
    )
    session = make_session(model_server, tmp_path, profile="readonly")
    result = await session.run(prompt="clean up")

    assert result.status == "completed"
    blocked = [event for event in result.events if event.type == "tool_blocked"]
    assert [event.tool_name for event in blocked] == ["bash"]
    assert blocked[0].tool_result is not None and "'rm'" in blocked[0].tool_result
    tool_messages = [m["content"] for m in session.state.messages if m["role"] == "tool"]
    assert tool_messages[0].startswith("Blocked: the permission profile 'readonly'")
    assert "no tool named 'write'" in tool_messages[1]
    assert tool_messages[2] == "precious"
    assert (tmp_path / "keep.txt").read_text() == "precious"
