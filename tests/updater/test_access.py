"""Access (updater.access): the bearer token and TLS, against real updater processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import grpc
import psutil
import pytest

from clients import UpdaterClient
from clients.channel import probe
from freshrec.processes import UpdaterProcess
from updater.access import TOKEN_ENV

pytestmark = pytest.mark.integration
TOKEN = "s3cret-" + uuid.uuid4().hex
FRESHREC = [sys.executable, "-m", "freshrec.cli"]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate it signs for 127.0.0.1, and a second CA that signed nothing."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
             "server.key", "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)
    return d


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def _code(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def _item(repository):
    from model_repository import contract as c
    from model_repository import versions

    model_dir = repository / c.RETRIEVE
    return int(versions.load_tables(model_dir / str(versions.latest_version(model_dir)))[1]
               ["item_ids"][0])


def test_admin_needs_the_token_and_feedback_does_not_by_default(repository, start_updater,
                                                               token_file):
    updater = start_updater(args=("--token-file", str(token_file)))
    with UpdaterClient(updater.url) as anyone:
        code, details = _code(anyone.status)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "no token sent" in details
        assert TOKEN not in details
        assert anyone.feedback(60_000_000, _item(repository), "skip").accepted == 1  # open
    with UpdaterClient(updater.url, token="wrong-" + TOKEN) as wrong:
        code, details = _code(wrong.publish)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "the token is wrong" in details
    with UpdaterClient(updater.url, token=TOKEN) as good:
        assert good.status()["published_version"] >= 1
    assert probe(updater.url) == "SERVING"  # probes carry no token
    assert TOKEN not in updater.log_path.read_text()


def test_feedback_needs_the_token_when_asked_streams_included(repository, start_updater,
                                                               token_file):
    updater = start_updater(args=("--token-file", str(token_file), "--feedback-needs-token"))
    event = dict(event_id=uuid.uuid4().hex, user_id=60_000_001, item_id=_item(repository),
                 kind="skip")
    with UpdaterClient(updater.url) as anyone:
        assert _code(lambda: anyone.feedback_batch([event]))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: anyone.feedback_stream([[event]]))[0] == grpc.StatusCode.UNAUTHENTICATED
        session = anyone.feedback_session()
        assert _code(lambda: session.send([event]))[0] == grpc.StatusCode.UNAUTHENTICATED
    with UpdaterClient(updater.url, token=TOKEN) as good:
        session = good.feedback_session()
        assert session.send([event]).accepted == 1
        session.close()
        assert good.feedback_batch([event]).duplicate_event_ids == [event["event_id"]]


def test_tls_with_the_right_ca_works_and_the_wrong_ca_or_plaintext_fails(stack, pki, tmp_path):
    env = {**os.environ, TOKEN_ENV: TOKEN}
    updater = UpdaterProcess(stack.repository, stack.grpc_url, log_path=tmp_path / "updater.log",
                             args=("--tls-cert", str(pki / "server.pem"),
                                   "--tls-key", str(pki / "server.key")),
                             env=env, tls_ca=pki / "ca.pem").start()
    try:
        with UpdaterClient(updater.url, token=TOKEN, tls_ca=pki / "ca.pem") as good:
            assert good.status()["published_version"] >= 1
        with UpdaterClient(updater.url, token=TOKEN, tls_ca=pki / "other-ca.pem",
                           timeout_s=5) as wrong_ca:
            assert _code(wrong_ca.status)[0] == grpc.StatusCode.UNAVAILABLE
        with UpdaterClient(updater.url, token=TOKEN, timeout_s=5) as plaintext:
            assert _code(plaintext.status)[0] == grpc.StatusCode.UNAVAILABLE
        assert probe(updater.url, tls_ca=pki / "ca.pem") == "SERVING"
        assert probe(updater.url, tls_ca=pki / "other-ca.pem").startswith("UNREACHABLE")
    finally:
        updater.stop()


def test_binding_beyond_loopback_without_a_token_is_refused_and_says_why(repository, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    done = subprocess.run([sys.executable, "-m", "updater", "--repository", str(repository),
                           "--host", "0.0.0.0", "--port", "0"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--host 0.0.0.0 is not loopback" in done.stderr
    assert "--token-file" in done.stderr
    done = subprocess.run(FRESHREC + ["serve", "--host", "0.0.0.0", "--repository",
                                      str(repository)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "needs a token" in done.stderr
    assert "ready" not in done.stdout


def test_with_a_token_tritons_control_apis_need_the_updaters_header(builds, tmp_path,
                                                                   token_file):
    """freshrec serve --token-file: inference stays open, Triton's model-repository API (load,
    unload, index) answers only calls with the header the updater derives from the token."""
    import signal
    import urllib.error
    import urllib.request

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from clients import Client
    from freshrec.child_process import free_port
    from model_repository import contract as c
    from tests.fixtures.builds import UPDATER
    from updater.access import triton_control_headers

    repository = builds.copy(UPDATER, tmp_path)
    ports = [free_port() for _ in range(5)]
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    serve = subprocess.Popen(
        FRESHREC + ["serve", "--repository", str(repository), "--token-file", str(token_file),
                    *(f"--{flag}={port}" for flag, port in zip(
                        ("grpc-port", "http-port", "metrics-port", "updater-port",
                         "updater-metrics-port"), ports))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = serve.stdout.readline()
        assert "freshrec ready" in line, (line, serve.stderr.read() if serve.poll() else "")
        grpc_url, http_url = f"127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
        with Client(grpc_url) as client:
            assert len(client.recommend(1, k=3).item_ids) == 3  # inference: open
        triton = grpcclient.InferenceServerClient(grpc_url)
        with pytest.raises(InferenceServerException) as refused:
            triton.get_model_repository_index()
        assert "restricted" in str(refused.value).lower() or "header" in str(refused.value).lower()
        with pytest.raises(InferenceServerException):
            triton.load_model(c.RETRIEVE)
        index = triton.get_model_repository_index(headers=triton_control_headers(TOKEN))
        assert {m.name for m in index.models} >= {c.RETRIEVE, c.RECOMMEND}
        triton.close()
        request = urllib.request.Request(f"{http_url}/v2/repository/index", data=b"{}",
                                         method="POST")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10)
        with UpdaterClient(f"127.0.0.1:{ports[3]}", token=TOKEN) as up:
            status = up.status()  # the updater reads Triton's index with its header
            assert status["loaded_versions"][c.RETRIEVE] >= 1
            assert up.publish()["version"] >= 1
        command_lines = " ".join(" ".join(p.cmdline())
                                 for p in psutil.Process(serve.pid).children(recursive=True))
        assert "tritonserver" in command_lines and TOKEN not in command_lines
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=60)


def test_freshrec_serve_with_tls_serves_recommend_and_the_updater_over_tls_only(builds, pki,
                                                                               tmp_path):
    import json
    import signal

    from tritonclient.utils import InferenceServerException

    from clients import Client
    from freshrec.child_process import free_port
    from tests.fixtures.builds import UPDATER

    repository = builds.copy(UPDATER, tmp_path)
    ports = [free_port() for _ in range(5)]
    ca = str(pki / "ca.pem")
    serve = subprocess.Popen(
        FRESHREC + ["serve", "--repository", str(repository), "--tls-cert",
                    str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), "--tls-ca", ca,
                    *(f"--{flag}={port}" for flag, port in zip(
                        ("grpc-port", "http-port", "metrics-port", "updater-port",
                         "updater-metrics-port"), ports))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = serve.stdout.readline()
        assert "freshrec ready" in line, (line, serve.stderr.read() if serve.poll() else "")
        grpc_url, updater_url = f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[3]}"
        with Client(grpc_url, tls_ca=ca) as client:
            assert len(client.recommend(1, k=3).item_ids) == 3
        with Client(grpc_url, timeout_s=5) as plaintext, pytest.raises(InferenceServerException):
            plaintext.recommend(1, k=3)
        with UpdaterClient(updater_url, tls_ca=ca) as up:
            assert up.status()["serving_versions"]["retrieve"] >= 1  # it reached Triton by TLS
        done = subprocess.run(FRESHREC + ["health", "--url", grpc_url, "--updater", updater_url,
                                          "--tls-ca", ca], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and json.loads(done.stdout)["healthy"], done.stdout
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=60)
