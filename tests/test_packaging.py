"""The installed package (issue 10, acceptance 2): ``pip install`` into a fresh venv, then the
``data-collector`` command and the imports, run from a directory outside the checkout.

The fast form installs with ``--no-deps`` into a venv that sees the system's packages, so it needs
no network; the slow form is the real thing: ``pip install .`` from the registry into an empty
venv, then ``data-collector demo`` with the database and Redis URLs pointed at closed ports (the
demo needs no servers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

import data_collector
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parent.parent
#: What a source tree needs to build; a copy keeps ``build/`` and ``*.egg-info`` out of the checkout.
SOURCES = ("pyproject.toml", "README.md", "data_collector", "utils")


def _source_copy(dest: Path) -> Path:
    dest.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, dest / name)
    # tests/, benchmarks/ and scripts/ sit beside the package as in the checkout: none may ship.
    for name in ("tests", "benchmarks", "scripts"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _outside_env(env_dir: Path) -> dict[str, str]:
    """The environment of a shell with the venv activated: no PYTHONPATH pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(env_dir)
    return env


def _run(
    args: list[str], cwd: Path, env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (
        f"{done.args}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    )
    return done.stdout


def _can_build_in_place(python: Path) -> bool:
    """``python`` sees a setuptools that builds wheels itself (70.1+, pinned in requirements-dev.txt)."""
    found = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('setuptools'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split(".")
    return len(found) >= 2 and (int(found[0]), int(found[1])) >= (70, 1)


def _check_installed(env_dir: Path, outside: Path, env: dict[str, str]) -> None:
    python = str(env_dir / "bin" / "python")
    assert _ok(_run(["data-collector", "--version"], outside, env, 60)).strip() == (
        f"data-collector {data_collector.__version__}"
    )
    assert _ok(_run(["data-collector", "demo", "--help"], outside, env, 60)).startswith(
        "usage: data-collector demo"
    )
    where = _ok(
        _run(
            [python, "-c", "import data_collector, utils; print(data_collector.__file__, utils.__file__)"],
            outside,
            env,
            60,
        )
    ).split()
    assert all(Path(path).is_relative_to(env_dir) for path in where), where
    listing = _ok(
        _run(
            [
                python,
                "-c",
                "from importlib.metadata import files; print(*files('data-collector'), sep='\\n')",
            ],
            outside,
            env,
            60,
        )
    ).split()
    top = {Path(path).parts[0] for path in listing}
    assert {"data_collector", "utils"} <= top
    assert not top & {"tests", "benchmarks", "scripts"}, sorted(top)
    assert top <= {
        "data_collector",
        "utils",
        "..",
        f"data_collector-{data_collector.__version__}.dist-info",
    }, top


def test_installed_package_runs_outside_the_checkout(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = _outside_env(env_dir)
    # Without build isolation when the backend is at hand (CI: requirements-dev.txt), so no network.
    isolation = ["--no-build-isolation"] if _can_build_in_place(env_dir / "bin" / "python") else []
    _ok(
        _run(
            [
                str(env_dir / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                *isolation,
                ".",
            ],
            source,
            env,
            240,
        )
    )
    _check_installed(env_dir, outside, env)
    # The checkout's scripts are thin shims over the installed package (no sys.path edits).
    usage = _ok(
        _run(
            [str(env_dir / "bin" / "python"), str(ROOT / "scripts" / "health_check.py"), "--help"],
            outside,
            env,
            60,
        )
    )
    assert usage.startswith("usage: health_check.py")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fresh_venv_install_and_demo(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = _outside_env(env_dir)
    _ok(_run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "."], source, env, 1000))
    _check_installed(env_dir, outside, env)
    env["DC__DATABASE__URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    env["DC__REDIS__URL"] = f"redis://127.0.0.1:{free_port()}/0"
    out = _ok(_run(["data-collector", "demo"], outside, env, 300))
    demo_db = outside / "data" / "demo.db"
    assert f"demo: storing in SQLite at {demo_db}" in out
    assert demo_db.stat().st_size > 0
    assert "SOL/USDT 1h, last rows:" in out
