"""The Streamlit server's settings (.streamlit/config.toml), read as a file and checked on a
real server started the way `make run` starts it: it answers on localhost only, refuses a
state-changing request without the XSRF token, caps uploads and hides error details."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROOT
from tests.e2e.harness import free_port

CONFIG = ROOT / ".streamlit" / "config.toml"


def test_config_file_settings():
    config = tomllib.loads(CONFIG.read_text())
    server, client = config["server"], config["client"]
    assert server["address"] in ("localhost", "127.0.0.1")  # not reachable from other machines
    assert server["enableXsrfProtection"] is True
    assert server.get("enableCORS", True) is True
    assert 1 <= server["maxUploadSize"] <= 1024
    assert client["showErrorDetails"] in ("none", False)  # no tracebacks in the page
    assert config["browser"]["gatherUsageStats"] is False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run explorer/app.py` from the repository root with no address given: the
    settings come from .streamlit/config.toml, as with `make run`."""
    runs = tmp_path_factory.mktemp("runs")
    port = free_port()
    env = {**os.environ, "VAE_RUNS_DIR": str(runs), "VAE_AUTOSTART": "0", "VAE_APP_THREADS": "1"}
    log = open(runs / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "explorer/app.py", "--server.port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (runs / "streamlit.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError("streamlit did not start:\n" + (runs / "streamlit.log").read_text()[-2000:])
        yield port
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def test_server_listens_on_localhost_only(server):
    assert _connects("127.0.0.1", server)
    # 127.0.0.2 is this machine too: a server bound to all interfaces (0.0.0.0) would answer
    # there, and on every network address of the machine
    assert not _connects("127.0.0.2", server)
    for addr in {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}:
        if not addr.startswith("127.0.0."):
            assert not _connects(addr, server), addr


def test_upload_without_the_xsrf_token_is_refused(server):
    body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.csv\"\r\n\r\n1,2\r\n--b--\r\n"
    request = urllib.request.Request(f"http://127.0.0.1:{server}/_stcore/upload_file/session/file", data=body,
                                     method="PUT", headers={"Content-Type": "multipart/form-data; boundary=b"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 403
    assert b"xsrf" in err.value.read().lower()
