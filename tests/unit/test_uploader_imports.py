"""An uploader pod imports only what it uses (issue #19: its start is paid per pod)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# what `voicevault uploader` does before its first PUT, without the network
_START = """
import json, sys
from pathlib import Path
from voicevault.uploader import batch_command, kubeapi
from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.s3client import AwsKeys, make_client

api = kubeapi.KubeApi(kubeapi.from_environment())
location = parse_bucket_url(
    "http://127.0.0.1:9/recordings/calls", endpoint_url="http://127.0.0.1:9", region="us-east-1"
)
make_client(location, AwsKeys("AKIAEXAMPLE", "not-a-secret"))
print(json.dumps(sorted(sys.modules)))
"""

NEVER = (
    "kubernetes",
    "boto3",
    "s3transfer.download",
    "s3transfer.manager",
    "yaml",
    "requests",
    # the batch is read by voicevault.batchfile; the CRDs' pydantic models are the operator's
    "pydantic",
    "pydantic_core",
    "voicevault.crds.recording",
    "voicevault.operator.scheduler",
    # deferred package bodies (voicevault.uploader.quickstart)
    "botocore.docs.bcdoc",
    "botocore.docs.service",
    "html.parser",
    "importlib.metadata",
)


def test_the_batch_command_and_its_clients_import_no_kubernetes_boto3_or_pydantic(
    tmp_path: Path,
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"tokenFile": str(tmp_path / "token")}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    env = {"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _START], capture_output=True, text=True, env=env, check=True
    )
    loaded = set(json.loads(out.stdout))
    assert "voicevault.uploader.batch_command" in loaded and "botocore.client" in loaded
    found = sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in NEVER))
    assert found == [], found


_LATER_USE = """
from voicevault.uploader import batch_command
from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.s3client import AwsKeys, make_client

location = parse_bucket_url("https://bucket-one.s3.eu-west-1.amazonaws.com/calls/")
client = make_client(location, AwsKeys("AKIAEXAMPLEEXAMPLE12", "not-a-secret"))
assert client.put_object.__doc__ == ""
import boto3  # its resource docs read botocore.docs.docstring for real
bucket = boto3.resource(
    "s3", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b"
).Bucket("bucket-one")
assert "upload" in bucket.upload_file.__doc__.lower()
import botocore.docs, urllib3.http2
assert callable(botocore.docs.generate_docs) and callable(urllib3.http2.inject_into_urllib3)
print("ok")
"""


def _prints_ok(code: str, home: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_deferred_package_body_runs_when_something_else_uses_it(tmp_path: Path) -> None:
    _prints_ok(_LATER_USE, tmp_path)


_COLLECTIONS = """
import gc
usual = gc.get_threshold()
from voicevault.uploader import batch_command, quickstart
assert gc.get_threshold()[0] == quickstart.START_THRESHOLD, gc.get_threshold()
from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.s3client import AwsKeys, make_client

location = parse_bucket_url("https://bucket-one.s3.eu-west-1.amazonaws.com/calls/")
make_client(location, AwsKeys("AKIAEXAMPLEEXAMPLE12", "not-a-secret"))
assert gc.get_threshold() == usual, gc.get_threshold()
assert gc.get_freeze_count() > 20_000, gc.get_freeze_count()  # botocore's model and all
print("ok")
"""


def test_collections_wait_for_the_first_client_then_run_as_usual(tmp_path: Path) -> None:
    _prints_ok(_COLLECTIONS, tmp_path)


def test_an_operator_process_importing_the_s3_client_keeps_its_collector_as_it_is() -> None:
    code = (
        "import gc; usual = gc.get_threshold()\n"
        "from voicevault.uploader import s3client, transfer\n"
        "assert gc.get_threshold() == usual and gc.get_freeze_count() == 0\n"
        "import sys; assert not any(type(f).__name__ == '_DeferringFinder' for f in sys.meta_path)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
