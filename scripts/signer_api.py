"""What the Python checks share: HTTP/JSON over the host's Unix socket, and the local
stack (`signer-dev up`) started and stopped."""
import http.client
import json
import signal
import socket
import subprocess


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def call(sock, method, path, body=None, raw=False):
    """(status, JSON answer), or with raw=True (status, content type, text)."""
    connection = UnixConnection(sock)
    payload = json.dumps(body) if body is not None else None
    headers = {"content-type": "application/json"} if body is not None else {}
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    data = response.read()
    content_type = response.getheader("content-type")
    connection.close()
    if raw:
        return response.status, content_type, data.decode()
    return response.status, json.loads(data or b"null")


def start(signer_dev, state):
    """`signer-dev up --dir STATE`, once it says it is up."""
    stack = subprocess.Popen(
        [signer_dev, "up", "--dir", state],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    for line in stack.stdout:
        if "Ctrl-C stops everything" in line:
            return stack
    raise AssertionError("signer-dev up did not start")


def stop(stack):
    stack.send_signal(signal.SIGINT)
    assert stack.wait(timeout=30) == 0, "signer-dev up did not stop cleanly"
