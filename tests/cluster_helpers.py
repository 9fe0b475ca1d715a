"""Helpers of the cluster tests (tests/test_cluster*.py).

Certificates are made with the README's own openssl lines (between its
`<!-- tls-certificates -->` markers), run as written, so that the recipe a newcomer follows is
the one the tests use: a CA, and a key and certificate each for `scheduler`, `worker1` and
`tuner`, in one folder. Made twice, the second folder is a CA the cluster does not know
(the fixtures are in tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- tls-certificates -->", "<!-- /tls-certificates -->"


def readme_commands() -> str:
    text = README.read_text()
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    return "\n".join(line for line in block.splitlines() if not line.startswith("```"))


def make_certificates(folder: Path) -> Path:
    """Runs the README's openssl lines in `folder`; returns it. Needs the openssl command."""
    if not shutil.which("openssl"):
        import pytest
        pytest.skip("no openssl command (the README's certificates need it; .ci/run "
                    "installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", "-euo", "pipefail", "-c", readme_commands()], cwd=folder,
                   check=True, capture_output=True, text=True)
    return folder


def tls_files(folder: Path, name: str):
    """The README's certificate files in `folder` for machine `name`, as a `TlsFiles`."""
    from tuner.measure.tls import TlsFiles

    return TlsFiles(str(folder / "ca.pem"), str(folder / f"{name}.pem"),
                    str(folder / f"{name}.key"))


def tls_flags(folder: Path, name: str) -> list[str]:
    """`tune`'s flags for machine `name` of the README's certificates in `folder`."""
    files = tls_files(folder, name)
    return ["--tls-ca-file", files.ca_file, "--tls-cert", files.cert, "--tls-key", files.key]


def one_error_line(capsys) -> str:
    """What `tune` printed on stderr: one line of error, and nothing else."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("tune: error: ") and "\n" not in err, err
    return err
