"""User and model text that looks like rich markup is printed as written, by the real CLI.

Each string below is valid-looking markup: ``[/red]`` crashes an unescaped print, ``[bold]x[/]``
silently disappears into a style, and ``[link=...]`` would turn text into a hyperlink. Every
printing path must show them verbatim and go on (the fleet paths: tests/integration).
"""

from __future__ import annotations

import json
from pathlib import Path

from rho_agent.testing import ScriptedModelServer, text, tool_call
from tests.sdk.test_cli_run import cli_env, rho

MARKUP = ("[/red]", "[bold]x[/]", "[link=file:///etc/passwd]")
FILE_TEXT = "[/red] closes nothing\n[bold]x[/] is not bold\n[link=file:///etc/passwd]click[/link]\n"


def wide_env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment, wide enough that rich never wraps a line inside a checked string."""
    return {**cli_env(tmp_path), "COLUMNS": "1000"}


def assert_verbatim(output: str) -> None:
    for markup in MARKUP:
        assert markup in output, f"{markup!r} was eaten or changed in:\n{output}"
    assert "Traceback" not in output and "MarkupError" not in output


def test_run_transcript_and_sessions_show_markup_verbatim(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "[bold]x.txt").write_text(FILE_TEXT)
    model_server.script(
        tool_call("read", {"path": "[/red]missing.txt"}),  # a tool error naming the bad path
        tool_call("read", {"path": "[bold]x.txt"}),
        text("The file says [/red] and [bold]x[/] and [link=file:///etc/passwd]."),
    )
    env = wide_env(tmp_path)
    prompt = "Read [bold]x[/].txt [/red] [link=file:///etc/passwd]"
    run = rho(["run", prompt, "--base-url", model_server.base_url, "--working-dir", str(work)], env)
    assert run.returncode == 0, run.stderr
    assert_verbatim(run.stdout)  # the answer
    assert_verbatim(run.stderr)  # tool calls, tool results, the tool error
    assert "[/red] closes nothing" in run.stderr  # the tool result is not dropped
    assert "[/red]missing.txt" in run.stderr

    listing = rho(["sessions"], env)
    assert listing.returncode == 0, listing.stderr
    assert "Read [bold]x[/].txt [/red] [link=file:///etc/passwd]" in listing.stdout
    session_id = run.stderr.split("session ", 1)[1].split()[0]
    shown = rho(["sessions", "show", session_id, "--full"], env)
    assert shown.returncode == 0, shown.stderr
    assert_verbatim(shown.stdout)
    assert "[/red] closes nothing" in shown.stdout


def test_errors_show_markup_and_keep_the_yaml_line_that_explains_them(tmp_path: Path) -> None:
    env = wide_env(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: gpt-5-mini\nprofile: readonly\n  extra: [bold]x[/] [/red]\n")
    config_error = rho(["run", "hi", "--config", str(bad), "--offline"], env)
    assert config_error.returncode == 2
    assert "extra: [bold]x[/] [/red]" in config_error.stderr  # the line YAML points at
    assert "Traceback" not in config_error.stderr

    missing_path = tmp_path / "[/red][link=file:" / "etc" / "passwd].yaml"
    missing = rho(["run", "hi", "--config", str(missing_path)], env)
    assert missing.returncode == 2
    assert str(missing_path) in missing.stderr
    assert "Traceback" not in missing.stderr

    batch = rho(["dispatch", str(tmp_path / "[bold]x[/] [/red].jsonl"), "--offline"], env)
    assert batch.returncode == 2
    assert "[bold]x[/] [/red].jsonl" in batch.stderr
    assert "Traceback" not in batch.stderr

    report = rho(["report", "[/red]no-such-batch"], env)
    assert report.returncode == 2 and "[/red]no-such-batch is not a file" in report.stderr

    unknown = rho(["sessions", "show", "[/red]"], env)
    assert unknown.returncode == 2 and "[/red]" in unknown.stderr


def test_dispatch_summary_and_results_keep_markup(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: text("answer [/red] [bold]x[/]")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps({"prompt": f"[/red] job {n} [link=file:///etc/passwd]"}) for n in (1, 2)
        )
    )
    done = rho(["dispatch", str(prompts), "--base-url", model_server.base_url], wide_env(tmp_path))
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in results] == ["answer [/red] [bold]x[/]"] * 2
    assert "2 completed, 0 failed" in done.stderr and "Traceback" not in done.stderr
