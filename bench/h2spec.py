"""HTTP/2 conformance: h2spec, the standard server conformance suite, against the gateway.

    make h2spec
    .venv/bin/python -m bench.h2spec [--source DIR] [--tree DIR] [--strict] [--check]

h2spec (github.com/summerwind/h2spec, Go) is built here from its source at the commit
pinned below, against the Go libraries Debian packages (``golang-go`` and the
``golang-*-dev`` packages `make h2spec` installs), offline: GOPATH mode, no module proxy.
Its source comes from ``--source`` (a clone of the repository, bare or not, holding that
commit, or an unpacked source tree), or else is fetched from GitHub at that commit. The
binary is kept in build/h2spec/ and only built once. When Go, one of the libraries or the
source cannot be had, the run is skipped with a message saying which, and exits 0.

The gateway runs on conf/bench.yaml (every request to one cluster: h2spec sends ``GET /``
and ``POST /``, the mock answers them all; h2spec checks the framing, not the answer) in
front of the mock upstream (bench/upstream.py), with two listeners: cleartext, where a
connection that opens with the HTTP/2 preface speaks h2c, and TLS with a self-signed
certificate made for the run, where ALPN picks h2. h2spec runs once against each. With
``--tree DIR`` the gateway runs from another checkout's source (its directory first on
``PYTHONPATH``), the config and the mock still from this one.

The output of both runs goes to bench/results/<date>-<machine>-h2spec.txt (``--output``
to choose), and the summary (tests, passed, skipped, failed, and each failure by its h2spec
id, which ``h2spec ID`` reruns alone) is printed. Failures do not change the exit status
unless ``--check`` is given.

One case cannot pass on the cleartext listener: http2/3.5/2 sends ``INVALID CONNECTION
PREFACE`` and wants a GOAWAY or the connection closed, but a cleartext listener serves
HTTP/1.1 too, and to it those bytes are an HTTP/1.1 request: it answers 400 and closes,
and h2spec, reading that answer as a frame, reports an error. Over TLS, where ALPN has
chosen h2, the case is meaningful.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
CONFIG = ROOT / "conf" / "bench.yaml"
BUILD_DIR = ROOT / "build" / "h2spec"

#: The h2spec built and run: master as of 2022-06-25, v2.6.0 and the fixes after it
#: (ECONNRESET counted as a closed connection, a DATA frame on an idle stream as a stream
#: error), the latest commit of the repository.
H2SPEC_REPOSITORY = "https://github.com/summerwind/h2spec"
H2SPEC_COMMIT = "af83a65f0b6273ef38bf778d400d98892e7653d8"
H2SPEC_VERSION = "2.6.0"
H2SPEC_MODULE = "github.com/summerwind/h2spec"

#: Where Debian's golang-*-dev packages put their source (a GOPATH).
DEBIAN_GOPATH = Path("/usr/share/gocode")
#: The packages h2spec imports (with those they import), and the Debian package of each.
#: Debian's versions are newer than the ones h2spec's go.mod names; the APIs it uses
#: (cobra's Command and flags, x/net's http2.Framer and hpack) are unchanged.
GO_LIBRARIES = {
    "github.com/fatih/color": "golang-github-fatih-color-dev",
    "github.com/mattn/go-colorable": "golang-github-mattn-go-colorable-dev",
    "github.com/mattn/go-isatty": "golang-github-mattn-go-isatty-dev",
    "github.com/spf13/cobra": "golang-github-spf13-cobra-dev",
    "github.com/spf13/pflag": "golang-github-spf13-pflag-dev",
    "golang.org/x/net/http2": "golang-golang-x-net-dev",
    "golang.org/x/sys/unix": "golang-golang-x-sys-dev",
    "golang.org/x/text/unicode/norm": "golang-golang-x-text-dev",
}

#: Seconds h2spec waits for each expected frame (its ``-o``; its default is 2).
H2SPEC_TIMEOUT = 2
#: Seconds the gateway and the mock have to start listening.
START_TIMEOUT = 30.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
SUMMARY_LINE = re.compile(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed")


class Skip(Exception):
    """h2spec cannot be had here; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class Failure:
    """One failed test case: its h2spec id (``http2/3.5/2``), title and h2spec's message."""

    case_id: str
    title: str
    message: str


@dataclass
class Run:
    """One h2spec run against one listener."""

    listener: str
    output: str
    tests: int = 0
    passed: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.listener}: {self.tests} tests, {self.passed} passed, "
            f"{self.skipped} skipped, {len(self.failures)} failed"
        )


# -- building h2spec ---------------------------------------------------------------------


def go_binary() -> str:
    """The Go toolchain's ``go``, or `Skip` when Go is not installed."""
    found = shutil.which("go") or next(
        (str(p) for p in sorted(Path("/usr/lib").glob("go*/bin/go"), reverse=True)), None
    )
    if found is None:
        raise Skip("Go is not installed (apt-get install golang-go, as root; make h2spec does)")
    return found


def check_go_libraries() -> None:
    """`Skip` naming the Debian packages whose Go source is missing from the GOPATH."""
    missing = sorted(
        {
            package
            for import_path, package in GO_LIBRARIES.items()
            if not (DEBIAN_GOPATH / "src" / import_path).is_dir()
        }
    )
    if missing:
        raise Skip(
            f"h2spec's Go libraries are missing from {DEBIAN_GOPATH}: "
            f"apt-get install {' '.join(missing)} (as root; make h2spec does)"
        )


def is_git_repository(path: Path) -> bool:
    """Whether *path* is a clone (its top directory) or a bare repository."""
    bare = all((path / name).exists() for name in ("HEAD", "objects", "refs"))
    return (path / ".git").exists() or bare


def export_source(source: Path | None, commit: str, into: Path) -> str:
    """Lay h2spec's source at *commit* out in *into*; what it was taken from.

    Args:
        source: a clone of h2spec holding *commit*, or an unpacked source tree (used as it
            is); None to fetch *commit* from GitHub.
        commit: the commit to build.
        into: an empty directory.
    """
    if source is not None and not is_git_repository(source):
        module = (source / "go.mod").read_text() if (source / "go.mod").exists() else ""
        if f"module {H2SPEC_MODULE}" not in module:
            raise Skip(f"{source} is neither a clone of h2spec nor its source tree (no go.mod)")
        shutil.copytree(source, into, dirs_exist_ok=True)
        return f"the source tree {source}, as it is"
    origin = f"{commit} of {source}"
    if source is None:
        source = fetch_commit(commit, into.parent / "fetched.git")
        origin = f"{commit} of {H2SPEC_REPOSITORY}"
    if shutil.which("git") is None:
        raise Skip(f"git is not installed, to read h2spec's source from {source}")
    archive = subprocess.run(
        ["git", "-C", str(source), "archive", "--format=tar", commit],
        capture_output=True,
    )
    if archive.returncode != 0:
        raise Skip(
            f"{source} does not hold h2spec's commit {commit} "
            f"({archive.stderr.decode(errors='replace').strip()})"
        )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return origin


def fetch_commit(commit: str, repository: Path) -> Path:
    """*commit* of h2spec's repository on GitHub, fetched into a new bare *repository*."""
    if shutil.which("git") is None:
        raise Skip("git is not installed, to fetch h2spec's source; or pass --source DIR")
    for command in (
        ["git", "init", "-q", "--bare", str(repository)],
        ["git", f"--git-dir={repository}", "fetch", "-q", "--depth=1", H2SPEC_REPOSITORY, commit],
    ):
        fetched = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if fetched.returncode != 0:
            raise Skip(
                f"could not fetch h2spec {commit} from {H2SPEC_REPOSITORY} "
                f"({fetched.stderr.strip() or 'git failed'}); pass --source DIR, a clone of it"
            )
    return repository


def build_h2spec(source: Path | None, commit: str) -> Path:
    """The h2spec binary for *commit*, built once into build/h2spec/ (from an unpacked
    source tree: built anew each time, its commit unknown)."""
    pinned = source is None or is_git_repository(source)
    target = BUILD_DIR / (commit[:12] if pinned else "source-tree") / "h2spec"
    if pinned and target.exists():
        return target
    go = go_binary()
    check_go_libraries()
    with tempfile.TemporaryDirectory(prefix="h2spec-build-") as scratch:
        gopath = Path(scratch) / "gopath"
        package_dir = gopath / "src" / H2SPEC_MODULE
        package_dir.mkdir(parents=True)
        origin = export_source(source, commit, package_dir)
        print(f"building h2spec from {origin}", flush=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        environment = {
            **os.environ,
            # GOPATH mode: h2spec's own packages from the scratch GOPATH, its
            # dependencies from Debian's; nothing is downloaded.
            "GO111MODULE": "off",
            "GOPROXY": "off",
            "GOFLAGS": "",
            "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOPATH}",
            "GOCACHE": str(BUILD_DIR / "go-cache"),
            "CGO_ENABLED": "0",
        }
        label = commit if pinned else "(unknown)"
        built = subprocess.run(
            [
                go,
                "build",
                "-o",
                str(target),
                "-ldflags",
                f"-X main.VERSION={H2SPEC_VERSION} -X main.COMMIT={label}",
                "./cmd/h2spec",
            ],
            cwd=package_dir,
            env=environment,
            capture_output=True,
            text=True,
        )
        if built.returncode != 0:
            raise Skip(f"h2spec did not build with Debian's Go libraries:\n{built.stderr}")
    return target


# -- the gateway -------------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path] | None:
    """A self-signed certificate for 127.0.0.1 and localhost, valid for a day: (key,
    certificate) files in *directory*, or None without the cryptography package."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_file = directory / "key.pem"
    cert_file = directory / "cert.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def mock_upstream() -> Iterator[int]:
    """bench/upstream.py on a free port, for the duration; its port."""
    with subprocess.Popen(
        [str(BIN / "python"), "-m", "bench.upstream", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().decode()
            if not line.startswith("PORT "):
                raise RuntimeError(f"the mock upstream did not start: {line!r}")
            yield int(line.split()[1])
        finally:
            stop(process)


@dataclass
class Gateway:
    """A running gateway: its process, log file and listening ports by scheme."""

    process: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]

    def errors_logged(self) -> list[str]:
        """The log's lines that report an unhandled error or a traceback."""
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if "Unhandled Error" in line or "Traceback" in line or "#critical]" in line
        ]


@contextmanager
def gateway(
    tree: Path, upstream: int, workdir: Path, tls: tuple[Path, Path] | None
) -> Iterator[Gateway]:
    """The gateway from *tree*'s source, on conf/bench.yaml before the mock at *upstream*,
    with a cleartext listener and (given a key and certificate) a TLS one, on free ports."""
    log = workdir / "gateway.log"
    log.unlink(missing_ok=True)
    # What twistd says before its log is open (a config it cannot read, say).
    console = workdir / "gateway.out"
    listeners = ["--listen", "tcp:0:interface=127.0.0.1"]
    if tls is not None:
        key, cert = tls
        listeners += ["--listen", f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1"]
    environment = {
        **os.environ,
        "FILTERPROXY_UPSTREAM": f"http://127.0.0.1:{upstream}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
    }
    imported = subprocess.run(
        [str(BIN / "python"), "-c", "import filterproxy; print(filterproxy.__file__)"],
        cwd=tree,
        env=environment,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(imported or "/").resolve().is_relative_to(tree):
        # The environment's own install would run instead (an editable one, say).
        raise RuntimeError(f"{tree} holds no gateway to run: filterproxy comes from {imported}")
    command = [
        str(BIN / "twistd"),
        "-n",
        "--pidfile=",
        "-l",
        str(log),
        "filterproxy",
        "-c",
        str(CONFIG),
        *listeners,
        "--admin",
        "tcp:0:interface=127.0.0.1",
    ]
    with console.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=tree, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wanted = 2 if tls is not None else 1
        deadline = time.monotonic() + START_TIMEOUT
        ports: dict[str, int] = {}
        while len(ports) < wanted:
            if process.poll() is not None or time.monotonic() > deadline:
                text = "".join(f.read_text(errors="replace") for f in (console, log) if f.exists())
                raise RuntimeError(f"the gateway did not start listening:\n{text[-3000:]}")
            time.sleep(0.1)
            if log.exists():
                for match in re.finditer(
                    r"filterproxy listening on .*?port=(\d+)\) \((\w+):",
                    log.read_text(errors="replace"),
                ):
                    ports[match[2]] = int(match[1])
        yield Gateway(process, log, ports)
    finally:
        stop(process)


# -- running h2spec ----------------------------------------------------------------------


def readable(output: str) -> str:
    """h2spec's output as a terminal shows it: each case's line is printed, then
    overwritten after a carriage return with its result; colours and the NULs of frames'
    bytes dropped."""
    lines = (line.rsplit("\r", 1)[-1] for line in output.split("\n"))
    return CONTROL_CHARACTERS.sub("", ANSI_ESCAPE.sub("", "\n".join(lines)))


def failures_from_junit(report: Path) -> list[Failure]:
    """Each failed or erroring case of h2spec's JUnit report, with its h2spec id (the
    suite's package, e.g. ``http2/3.5``, and the case's number in it)."""
    # h2spec writes frames' bytes into its messages as they are (a PING's opaque data
    # holds NULs), which XML does not allow: they are dropped.
    text = CONTROL_CHARACTERS.sub("", report.read_text(errors="replace"))
    failures = []
    for suite in ElementTree.fromstring(text).iter("testsuite"):
        for number, case in enumerate(suite.iter("testcase"), start=1):
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            if problem is None:
                continue
            # Its message: what was expected, one outcome a line, then what happened
            # (or a single line: an error that ended the case).
            lines = [
                line.strip()
                for line in (problem.text or "").splitlines()
                if line.strip() and line.strip() not in ("Expect:", "Actual:")
            ]
            message = lines[-1] if lines else ""
            if len(lines) > 1:
                message = f"expected {' or '.join(lines[:-1])}; got {lines[-1]}"
            failures.append(
                Failure(f"{suite.get('package')}/{number}", case.get("classname") or "", message)
            )
    return failures


def run_h2spec(
    binary: Path, listener: str, port: int, tls: bool, strict: bool, workdir: Path
) -> Run:
    report = workdir / f"{listener.split()[0]}.xml"
    command = [str(binary), "-h", "127.0.0.1", "-p", str(port), "-o", str(H2SPEC_TIMEOUT)]
    command += ["-j", str(report)]
    if tls:
        command += ["-t", "-k"]
    if strict:
        command.append("-S")
    # Bytes, not text: text mode would turn its carriage returns into line ends.
    finished = subprocess.run(command, capture_output=True, timeout=900)
    output = readable((finished.stdout + finished.stderr).decode(errors="replace"))
    run = Run(listener, output)
    summary = SUMMARY_LINE.search(output)
    if summary is None or not report.exists():
        raise RuntimeError(f"h2spec did not finish against {listener}:\n{output[-3000:]}")
    run.tests, run.passed, run.skipped = (int(summary[n]) for n in (1, 2, 3))
    run.failures = failures_from_junit(report)
    if len(run.failures) != int(summary[4]):
        raise RuntimeError(
            f"h2spec counted {summary[4]} failures against {listener}, "
            f"its report {len(run.failures)}"
        )
    return run


def describe_tree(tree: Path) -> str:
    """The commit *tree* is at, and the gateway's files that differ from it."""
    git = ["git", "-C", str(tree)]
    try:
        head = subprocess.run(
            [*git, "log", "-1", "--format=commit %h, %s"], capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", "filterproxy", "twisted"],
            capture_output=True,
            text=True,
        ).stdout
    except FileNotFoundError:
        head = ""
    if not head:
        return "not a git checkout"
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    if changed:
        return f"{head}; not committed: changes to {', '.join(changed)}"
    return head


def default_output() -> Path:
    stamp = datetime.date.today().isoformat()
    return HERE / "results" / f"{stamp}-{platform.node() or 'machine'}-h2spec.txt"


def run_all(
    binary: Path, tree: Path, strict: bool, tls_listener: bool
) -> tuple[list[Run], bool, list[str]]:
    """h2spec against the gateway from *tree*, on its cleartext listener and (with
    *tls_listener*) its TLS one: the runs, whether the gateway was still up after them,
    and the errors it logged."""
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="h2spec-run-") as scratch:
        workdir = Path(scratch)
        tls = make_certificate(workdir) if tls_listener else None
        if tls is None and tls_listener:
            print("no TLS listener: the cryptography package is not installed")
        with mock_upstream() as upstream, gateway(tree, upstream, workdir, tls) as running:
            listeners = [("h2c (prior knowledge)", "tcp", False)]
            if tls is not None:
                listeners.append(("h2 (TLS, ALPN)", "ssl", True))
            for label, scheme, over_tls in listeners:
                port = running.ports[scheme]
                runs.append(run_h2spec(binary, label, port, over_tls, strict, workdir))
            still_up = running.process.poll() is None
            errors = running.errors_logged()
    return runs, still_up, errors


def main() -> int:
    parser = argparse.ArgumentParser(description="h2spec, HTTP/2 conformance, on the gateway")
    parser.add_argument(
        "--source",
        type=Path,
        help="h2spec's source: a clone holding the pinned commit, or an unpacked tree "
        "(default: fetch the pinned commit from GitHub)",
    )
    parser.add_argument("--commit", default=H2SPEC_COMMIT, help="the h2spec commit to build")
    parser.add_argument("--binary", type=Path, help="an h2spec binary to run instead")
    parser.add_argument(
        "--tree", type=Path, default=ROOT, help="the checkout whose gateway runs (default: this)"
    )
    parser.add_argument("--strict", action="store_true", help="h2spec's strict cases too (-S)")
    parser.add_argument("--no-tls", action="store_true", help="the cleartext listener only")
    parser.add_argument("--output", type=Path, help="where the output goes")
    parser.add_argument("--check", action="store_true", help="exit 1 when a case fails")
    args = parser.parse_args()

    try:
        binary = args.binary or build_h2spec(args.source, args.commit)
    except Skip as skip:
        print(f"h2spec skipped: {skip}")
        return 0
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    tree = args.tree.resolve()
    try:
        runs, still_up, errors = run_all(binary, tree, args.strict, not args.no_tls)
    except RuntimeError as e:
        print(f"h2spec could not run: {e}")
        return 2

    header = [
        f"h2spec {version.stdout.strip().replace(chr(10), ' ')}"
        f"{' (strict: -S)' if args.strict else ''}",
        f"gateway{'' if tree == ROOT else ' (--tree)'}: {describe_tree(tree)}",
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"gateway after the runs: {'running' if still_up else 'exited'}, "
        f"{len(errors)} unhandled errors logged",
    ]
    summary = []
    for run in runs:
        summary.append(run.summary())
        summary += [f"  {f.case_id}: {f.title} — {f.message}" for f in run.failures]
    output = args.output or default_output()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        "\n".join(
            [*header, "", *summary, ""]
            + [f"\n==== {run.listener} ====\n\n{run.output.strip()}\n" for run in runs]
        )
    )
    print("\n".join([*header, *summary, f"output: {output}"]))
    failed = any(run.failures for run in runs) or not still_up
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
