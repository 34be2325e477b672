"""scripts/setup.sh installs rafs into a virtual environment inside the checkout and never into the
machine's interpreter (issue 16): run against stand-ins for python3, dpkg-query and apt-get that record
how they are called, in a copy of the script."""

from __future__ import annotations

import os
import shutil
import subprocess

from conftest import ROOT

RECORDER = """#!/bin/sh
echo "$0 $*" >> "{log}"
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  cp "$0" "$3/bin/python"
fi
"""


def _checkout(tmp_path):
    """A checkout holding only scripts/setup.sh, and a bin directory of recording stand-ins."""
    checkout, fake = tmp_path / "checkout", tmp_path / "bin"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", checkout / "scripts" / "setup.sh")
    fake.mkdir()
    log = tmp_path / "calls.log"
    stand_ins = {"python3": RECORDER.format(log=log),
                 "dpkg-query": "#!/bin/sh\nprintf 'install ok installed'\n",
                 "apt-get": f"#!/bin/sh\necho \"apt-get $*\" >> \"{log}\"\nexit 1\n"}
    for name, text in stand_ins.items():
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    return checkout, fake, log


def _run(checkout, fake):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = f"{fake}:/usr/bin:/bin"
    return subprocess.run(["bash", str(checkout / "scripts" / "setup.sh")], check=False, capture_output=True, text=True,
                          env=env, timeout=60)


def test_setup_installs_into_a_venv_in_the_checkout(tmp_path):
    checkout, fake, log = _checkout(tmp_path)
    proc = _run(checkout, fake)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    machine = [c for c in calls if c.startswith(str(fake / "python3"))]
    assert machine == [f"{fake / 'python3'} -m venv .venv"], calls          # the machine's python: only venv
    venv_python = str(checkout / ".venv" / "bin" / "python")
    installs = [c for c in calls if " pip install " in f" {c} "]
    assert installs and all(c.startswith(venv_python + " -m pip install") for c in installs), calls
    assert not any(c.startswith("apt-get") for c in calls)
    assert "source .venv/bin/activate" in proc.stderr


def test_setup_again_reuses_the_venv(tmp_path):
    checkout, fake, log = _checkout(tmp_path)
    assert _run(checkout, fake).returncode == 0
    log.write_text("")
    proc = _run(checkout, fake)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls and not any(c.startswith(str(fake / "python3")) for c in calls), calls
