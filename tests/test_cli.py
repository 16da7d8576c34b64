import subprocess
import sys

from infoplane import __version__
from infoplane.cli import main


def test_version_via_module():
    out = subprocess.run(
        [sys.executable, "-m", "infoplane", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in out.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_import_and_help_are_light():
    heavy = "('torch', 'dask', 'zarr', 'xarray', 'matplotlib')"
    code = (
        "import sys, infoplane.cli; infoplane.cli.build_parser(); "
        f"print(any(m in sys.modules for m in {heavy}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
