"""Make targets pass the documented data variables through instead of silently ignoring them."""
import subprocess

from tests.helpers import REPO


def test_demo_trains_on_the_data_variable(tmp_path):
    missing = tmp_path / "no_such_folder"
    result = subprocess.run(["make", "--no-print-directory", "demo", f"DATA={missing}", f"OUT={tmp_path}",
                             f"DEMO_DIR={tmp_path / 'demo'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1 and str(missing) in errors[0], result.stderr[-2000:]
