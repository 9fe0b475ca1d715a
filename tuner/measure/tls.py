"""TLS for the cluster: the Dask `Security` a tuner or a `tune worker` joins a scheduler with.

A Dask worker runs whatever Python its scheduler sends it, and a scheduler hands work to, and
takes timings from, any worker that joins it: a cluster anyone can reach is a door onto every
machine in it. Over `tls://` every connection (tuner and workers to the scheduler, workers to
each other) is TLS with a certificate on both ends, signed by the cluster's own CA, and Dask
refuses a peer without one (README, "Tuning on several machines", makes them with openssl).

This is Dask's own TLS (`distributed.security.Security`), not a scheme of ours: `--tls-ca-file`,
`--tls-cert` and `--tls-key` are Dask's flags of the same names, and where one is not given
Dask's configuration fills it in (`distributed.comm.tls.ca-file`, `...tls.client.cert` for a
tuner, `...tls.worker.cert` for a worker). What this module adds is checking at the boundary,
so that each mistake is one line naming the bad value before anything connects: TLS files
with a plain address, a `tls://` address without a CA or certificate, a file that is missing
or does not load. `check_accepted` then makes one connection as a worker (or the tuner) would,
because a Dask worker whose certificate the scheduler refuses (or that speaks plain tcp:// to
a TLS scheduler) would otherwise wait to join for ever, and a tuner or worker whose peer
accepts the connection and never answers (Dask bounds reaching an address, not the handshake
after it) would wait for ever too; `handshake_refused` words that refusal for tuner and worker
alike.

`--cluster local:N` needs no files: its cluster always runs over TLS with a certificate made
for the run (`temporary_security`, Dask's `Security.temporary`), held in memory by the tuner
and handed to the worker processes it starts. Its scheduler listens on a loopback port that
every user of this machine can reach; without TLS any of them could run code as the tuner's
user or feed it timings. The price is one key generation per run and TLS on the loopback.
"""

from __future__ import annotations

import asyncio

import os
from dataclasses import dataclass

from tuner.errors import TunerError, one_line

TLS_SCHEME = "tls"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """--tls-ca-file, --tls-cert and --tls-key as given on the command line (None: not
    given, so Dask's configuration decides)."""
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None  # None: the key follows the certificate in its file

    def flags(self) -> list[str]:
        """The flags that were given, for messages."""
        return [flag for flag, value in (("--tls-ca-file", self.ca_file),
                                         ("--tls-cert", self.cert), ("--tls-key", self.key))
                if value is not None]


def scheme_of(address: str) -> str:
    """The scheme of a Dask address; Dask reads an address without one as tcp://."""
    return address.split("://", 1)[0] if "://" in address else "tcp"


@dataclass(frozen=True, slots=True)
class _Setting:
    """One TLS file: its flag, its key in Dask's configuration, whether the flag was given,
    and the value the Security holds."""
    flag: str
    config_key: str
    given: bool
    value: str | None

    @property
    def name(self) -> str:
        """Where the value came from, for messages."""
        return self.flag if self.given else self.config_key


def _settings(security, files: TlsFiles, role: str) -> list[_Setting]:
    """The CA, certificate and key the Security holds (see `_Setting`)."""
    return [_Setting("--tls-ca-file", "distributed.comm.tls.ca-file", files.ca_file is not None,
                     security.tls_ca_file),
            _Setting("--tls-cert", f"distributed.comm.tls.{role}.cert", files.cert is not None,
                     getattr(security, f"tls_{role}_cert")),
            _Setting("--tls-key", f"distributed.comm.tls.{role}.key", files.key is not None,
                     getattr(security, f"tls_{role}_key"))]


def cluster_security(address: str, files: TlsFiles, role: str):
    """The `Security` to join the scheduler at `address` with, as `role` ("client": a tuner;
    "worker": `tune worker`), checked; None for a plain address (Dask's defaults apply).
    Raises TunerError, one line, for TLS files with a plain address, a tls:// address with no
    CA or certificate, or a file that is missing or does not load."""
    from distributed.security import Security

    if scheme_of(address) != TLS_SCHEME:
        if files.flags():
            raise TunerError(f"{', '.join(files.flags())} are for a tls:// scheduler; "
                             f"{address!r} is a plain {scheme_of(address)}:// address")
        if Security().require_encryption:
            raise TunerError(f"Dask's configuration requires encryption "
                             f"(distributed.comm.require-encryption): the scheduler's address "
                             f"must be tls://, got {address!r}")
        return None
    given = {"tls_ca_file": files.ca_file, f"tls_{role}_cert": files.cert,
             f"tls_{role}_key": files.key}
    security = Security(require_encryption=True,
                        **{field: value for field, value in given.items() if value is not None})
    ca, cert, key = _settings(security, files, role)
    missing = [s for s in (ca, cert) if not s.value]
    if missing:
        raise TunerError(f"the tls:// scheduler {address} needs "
                         f"{' and '.join(s.flag for s in missing)} (or "
                         f"{' and '.join(s.config_key for s in missing)} in Dask's "
                         f"configuration): certificates signed by the cluster's CA (README, "
                         f"\"Tuning on several machines\")")
    for setting in (ca, cert, key):
        # a value with a newline is PEM text held in Dask's configuration, not a path
        if setting.value and "\n" not in setting.value and not os.path.isfile(setting.value):
            raise TunerError(f"{setting.name} {setting.value!r}: no such file")
    try:
        security.get_connection_args(role)  # loads the CA, the certificate and its key
    except OSError as err:  # ssl.SSLError: not PEM, or a key that is not the certificate's
        named = ", ".join(f"{s.name} {s.value}" for s in (ca, cert, key) if s.value)
        raise TunerError(f"cannot load the TLS files ({named}): {one_line(err)}") from None
    return security


def temporary_security():
    """`--cluster local:N`'s Security: a certificate made for this run (see the docstring)."""
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError:
        raise TunerError("--cluster local:N runs over TLS with a certificate made for the "
                         "run, which needs the cryptography package: pip install -e "
                         "\".[cluster]\"") from None


def handshake_refused(address: str, role: str, err: BaseException) -> TunerError:
    """The one line for a connection the scheduler (or this side) closed in the handshake:
    certificates of different CAs, or a plain tcp:// peer of a TLS scheduler."""
    who = "tuner" if role == "client" else role
    if scheme_of(address) == TLS_SCHEME:
        return TunerError(f"the Dask scheduler at {address} and this {who} refused each "
                          f"other's TLS certificate ({one_line(err)}); both need "
                          f"certificates signed by the cluster's CA (--tls-ca-file)")
    return TunerError(f"the Dask scheduler at {address} closed the connection in the "
                      f"handshake ({one_line(err)}); if it runs TLS, join it at its tls:// "
                      f"address with --tls-ca-file, --tls-cert and --tls-key")


async def check_accepted(address: str, security, role: str, timeout_s: float) -> None:
    """Connects to the scheduler once as `role`, and hangs up: a scheduler not reached within
    `timeout_s`, or one that refuses this side's certificate, is a TunerError (see the
    docstring)."""
    from distributed.comm import connect
    from distributed.comm.core import CommClosedError
    from distributed.security import Security

    args = (security or Security()).get_connection_args(role)
    try:
        # Dask's own timeout bounds reaching the address, not the handshake after it: a peer
        # that accepts and never answers would hold this for ever
        comm = await asyncio.wait_for(connect(address, timeout=timeout_s, **args), timeout_s)
    except CommClosedError as err:
        raise handshake_refused(address, role, err) from None
    except TimeoutError:
        raise TunerError(f"cannot reach the Dask scheduler at {address}: no answer within "
                         f"{timeout_s:g} s") from None
    except OSError as err:
        raise TunerError(f"cannot reach the Dask scheduler at {address}: "
                         f"{one_line(err)}") from None
    await comm.close()
