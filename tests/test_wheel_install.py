"""A non-editable wheel install imports all four packages (models/guides/analysis are mapped folders)."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import venv

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_installs_and_imports(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("sqs_pyro-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, str(wheel)], check=True
    )
    # dependencies (torch, pyro, ...) come from the test environment's site-packages, appended after the wheel
    # (addsitedir: its .pth files count, for a venv whose dependencies come through one)
    deps = sysconfig.get_paths()["purelib"]
    code = (
        "import site; site.addsitedir(%r)\n"
        "import sqs_pyro, sqs_pyro.models, sqs_pyro.guides, sqs_pyro.analysis, sqs_pyro.run.cli, sqs_pyro.baselines\n"
        "for m in (sqs_pyro, sqs_pyro.models, sqs_pyro.guides, sqs_pyro.analysis, sqs_pyro.run.cli, sqs_pyro.baselines):\n"
        "    assert m.__file__.startswith(%r), m.__file__\n"
        "assert sqs_pyro.models.SQSModel.__name__ == 'SQSModel' and sqs_pyro.guides.SQSGuide.__name__ == 'SQSGuide'\n"
        "print('ok')\n" % (deps, target)
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.stdout.strip() == "ok"
