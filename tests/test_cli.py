import subprocess
import sys
import textwrap

import pytest

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


@pytest.mark.parametrize(
    ("dataset", "model", "message"),
    [
        # caught when the config is read
        ("{name: digits}", "{name: paper_cnn, hidden: [4]}", "model.hidden: not an option"),
        ("{name: digits}", "{name: mlp, dropout: 0.2}", "model.dropout: not an option"),
        # caught when the model is built for the data
        ("{name: digits}", "{name: vgg16}", "model 'vgg16' needs images"),
        # caught when the data is loaded
        ("{name: digits, split_seed: -1}", "{name: mlp}", "split_seed must be an int >= 0"),
    ],
)
def test_train_with_a_bad_config_fails_cleanly(tmp_path, dataset, model, message):
    config = tmp_path / "bad.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            experiments:
              e:
                dataset: {dataset}
                model: {model}
                training: {{epochs: 1, device: cpu}}
            """
        )
    )
    store = tmp_path / "run" / "activations.zarr"
    command = [sys.executable, "-m", "infoplane", "train", "--config", str(config)]
    command += ["--experiment", "e", "--run", "seed0", "--out", str(store)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("infoplane: error:") and message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not store.exists()
