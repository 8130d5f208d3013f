from typer.testing import CliRunner

from legato.cli import app


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "legato" in result.output.lower()
