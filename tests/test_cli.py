import subprocess
import sys

import pytest

from msa import cli
from tests.conftest import REPO


def test_underscore_aliases_are_accepted():
    p = cli.ArgumentParser()
    cli.add_data_args(p)
    p.add_argument("--val-ratio", type=float, default=0.1)
    args = p.parse_args(["--data_root", "x", "--val_ratio=0.2", "--work-dir", "w"])
    assert str(args.data_root) == "x" and args.val_ratio == 0.2 and str(args.work_dir) == "w"
    with pytest.raises(SystemExit):
        p.parse_args(["--no_such_flag", "1"])


def test_help_mentions_aliases_and_defaults(capsys):
    p = cli.ArgumentParser(description="d")
    cli.add_data_args(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--data-root" in out and "--data_root" not in out  # aliases work without cluttering --help
    assert "(default: dataset)" in out and "--flag_name" in out


def test_user_error_is_one_line_not_a_traceback(capsys):
    def main(argv):
        raise cli.UserError("something the user can fix")

    assert cli.run_main(main, []) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: something the user can fix"


@pytest.mark.parametrize("script", ["phase0/data_cleaner.py", "phase0/data_analysis.py"])
def test_phase_scripts_explain_themselves(script):
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "--data-root" in out.stdout and "python phase0/" in out.stdout


def test_a_script_of_another_checkout_is_refused_not_run(tmp_path, capsys):
    """A .venv copied from another checkout imports that checkout's msa: a script of this one must not run on it
    (it would write its dataset/ and look for models in the other checkout)."""
    import importlib.util

    other = tmp_path / "other"
    (other / "msa").mkdir(parents=True)
    (other / "msa" / "__init__.py").write_text("")
    (other / "phase9").mkdir()
    script = other / "phase9" / "run.py"
    script.write_text("ran = []\ndef main(argv=None):\n    ran.append(argv)\n    return 0\n")
    spec = importlib.util.spec_from_file_location("phase9_run", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert cli.foreign_library(module.main) == other.resolve()
    assert cli.run_main(module.main, []) == 2 and module.ran == []
    err = capsys.readouterr().err
    assert str(other.resolve()) in err and str(cli.REPO_ROOT) in err and "pip install" in err
    # this checkout's own scripts (and a main outside any checkout) run as before
    from phase0 import data_cleaner

    assert cli.foreign_library(data_cleaner.main) is None
    (tmp_path / "loose.py").write_text("def main(argv=None):\n    return 0\n")
    spec = importlib.util.spec_from_file_location("loose", tmp_path / "loose.py")
    loose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loose)
    assert cli.foreign_library(loose.main) is None and cli.run_main(loose.main, []) == 0
