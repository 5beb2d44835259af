"""`voicevault decrypt` and `voicevault upload` given what users really type: wrong keys,
cut or tampered objects, malformed details, junk URLs.

decrypt runs as a subprocess (`python -m voicevault`) on a real object made with the
envelope module; it needs no S3. upload is tested only for usage errors, which fail
before any network use: every case runs without AWS credentials in the environment, so
a URL that happens to be valid still stops at "set AWS_ACCESS_KEY_ID" (exit 2).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.keys import KeyPair, key_pair
from voicevault import cli
from voicevault.uploader import envelope

PLAIN = b"RIFF" + bytes(range(256)) * 20 + b"end of call"
PASSWORD = "correct horse battery staple"
PASSWORD_ENV = "VOICEVAULT_KEY_PASSWORD"
DECRYPT_ERROR = "voicevault decrypt: error: "
UPLOAD_ERROR = "voicevault upload: error: "


# --- a real encrypted object ----------------------------------------------------------


@dataclass(frozen=True)
class Sealed:
    """Everything a customer has after downloading an object: key, details, bytes."""

    pair: KeyPair
    details: envelope.EncryptionDetails
    blob: bytes


@pytest.fixture(scope="module")
def sealed() -> Sealed:
    pair = key_pair()
    content_key = envelope.new_content_key()
    details = envelope.seal_content_key(envelope.load_public_key(pair.public_pem), content_key)
    encryptor = envelope.StreamEncryptor(content_key)
    blob = encryptor.update(PLAIN) + encryptor.finalize()
    return Sealed(pair, details, blob)


@dataclass
class Workspace:
    """Inputs in one folder, the output in another, so leftovers are easy to see."""

    inputs: Path
    out_dir: Path
    private_key: Path
    obj: Path
    sealed: Sealed

    @property
    def output(self) -> Path:
        return self.out_dir / "call.wav"

    def status_json(self) -> str:
        return json.dumps(self.sealed.details.to_status())

    def twilio_json(self) -> str:
        return json.dumps(self.sealed.details.to_twilio())

    def write_input(self, name: str, data: bytes | str) -> Path:
        path = self.inputs / name
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        return path


@pytest.fixture
def ws(tmp_path: Path, sealed: Sealed) -> Workspace:
    inputs, out_dir = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out_dir.mkdir()
    private_key = inputs / "private.pem"
    private_key.write_bytes(sealed.pair.private_pem)
    obj = inputs / "object.bin"
    obj.write_bytes(sealed.blob)
    return Workspace(inputs, out_dir, private_key, obj, sealed)


def _env(password: str | bytes | None = None) -> dict[bytes, bytes]:
    """The caller's environment without AWS keys or a key password (bytes, so a
    password that is not UTF-8 can be passed as a shell would)."""
    env = {
        os.fsencode(k): os.fsencode(v)
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k != PASSWORD_ENV
    }
    if password is not None:
        env[PASSWORD_ENV.encode()] = password if isinstance(password, bytes) else password.encode()
    return env


def _run(
    *args: str | Path, env: Mapping[bytes, bytes] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicevault", *map(str, args)],
        env=dict(env) if env is not None else _env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )


def _decrypt(
    ws: Workspace,
    details: str | Path | None = None,
    *,
    private_key: Path | None = None,
    obj: Path | None = None,
    output: Path | None = None,
    password: str | bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    return _run(
        "decrypt",
        "--private-key",
        private_key or ws.private_key,
        "--details",
        ws.status_json() if details is None else details,
        obj or ws.obj,
        output or ws.output,
        env=_env(password),
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], prefix: str) -> str:
    """Exactly one line on stderr, the command's own error, and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith(prefix), proc.stderr
    assert proc.stdout == ""
    return lines[0].removeprefix(prefix)


def _assert_failed(
    proc: subprocess.CompletedProcess[str], ws: Workspace, code: int, *words: str
) -> str:
    """Failed with `code`, said why in one line, and left nothing in the output folder."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    message = _assert_one_line_error(proc, DECRYPT_ERROR)
    for word in words:
        assert word.lower() in message.lower(), message
    assert sorted(p.name for p in ws.out_dir.iterdir()) == [], "no output and no .part file"
    return message


def _assert_decrypted(proc: subprocess.CompletedProcess[str], ws: Workspace) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert ws.output.read_bytes() == PLAIN
    assert [p.name for p in ws.out_dir.iterdir()] == ["call.wav"], "no .part file left"
    assert f"decrypted {len(PLAIN)} bytes" in proc.stderr


# --- decrypt: what works ------------------------------------------------------------


@pytest.mark.parametrize("form", ["camelCase", "snake_case", "mixed", "both"])
def test_decrypt_accepts_every_details_form_inline(ws: Workspace, form: str) -> None:
    status, twilio = ws.sealed.details.to_status(), ws.sealed.details.to_twilio()
    details = {
        "camelCase": status,
        "snake_case": twilio,
        "mixed": {"type": "rsa-aes", "publicKeySid": status["publicKeySid"]}
        | {"encrypted_cek": twilio["encrypted_cek"], "iv": twilio["iv"]},
        "both": status | twilio,
    }[form]
    _assert_decrypted(_decrypt(ws, json.dumps(details, indent=2)), ws)


@pytest.mark.parametrize("form", ["camelCase", "snake_case"])
def test_decrypt_reads_details_from_a_file(ws: Workspace, form: str) -> None:
    text = ws.status_json() if form == "camelCase" else ws.twilio_json()
    path = ws.write_input("details.json", "\n" + text + "\n")
    _assert_decrypted(_decrypt(ws, path), ws)


def test_decrypt_with_the_right_password(ws: Workspace) -> None:
    key = serialization.load_pem_private_key(ws.sealed.pair.private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    locked = ws.write_input(
        "locked.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        ),
    )
    _assert_decrypted(_decrypt(ws, private_key=locked, password=PASSWORD), ws)


# --- decrypt: damaged objects and wrong keys (exit 1) -------------------------------


@pytest.mark.parametrize(
    "keep",
    [
        pytest.param(0, id="empty"),
        pytest.param(5, id="shorter-than-a-tag"),
        pytest.param(envelope.TAG_SIZE, id="tag-sized"),
        pytest.param(len(PLAIN) // 2, id="half"),
        pytest.param(-envelope.TAG_SIZE, id="tag-missing"),
        pytest.param(-1, id="one-byte-short"),
    ],
)
def test_decrypt_truncated_object(ws: Workspace, keep: int) -> None:
    cut = ws.write_input("cut.bin", ws.sealed.blob[:keep])
    message = _assert_failed(_decrypt(ws, obj=cut), ws, 1)
    assert "truncated" in message or "authentication failed" in message


@pytest.mark.parametrize(
    ("position", "mask"),
    [(0, 0x01), (len(PLAIN) // 2, 0x80), (len(PLAIN) - 1, 0xFF), (-envelope.TAG_SIZE, 1), (-1, 1)],
)
def test_decrypt_tampered_object(ws: Workspace, position: int, mask: int) -> None:
    tampered = bytearray(ws.sealed.blob)
    tampered[position] ^= mask
    path = ws.write_input("tampered.bin", bytes(tampered))
    _assert_failed(_decrypt(ws, obj=path), ws, 1, "authentication failed")


damage = st.one_of(
    st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=len(PLAIN) + 15)),
    st.tuples(
        st.just("flip"),
        st.tuples(
            st.integers(min_value=0, max_value=len(PLAIN) + 15),
            st.integers(min_value=1, max_value=255),
        ),
    ),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(change=damage)
def test_decrypt_any_damaged_object_fails_cleanly_in_process(
    tmp_path_factory: pytest.TempPathFactory,
    sealed: Sealed,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, object],
) -> None:
    """Whatever was cut, flipped or added: exit 1, one line, no output file of any kind."""
    kind, arg = change
    blob = bytearray(sealed.blob)
    if kind == "truncate":
        assert isinstance(arg, int)
        del blob[arg:]
    elif kind == "flip":
        assert isinstance(arg, tuple)
        blob[arg[0]] ^= arg[1]
    else:
        assert isinstance(arg, bytes)
        blob += arg
    folder = tmp_path_factory.mktemp("damaged")
    (folder / "out").mkdir()
    (folder / "key.pem").write_bytes(sealed.pair.private_pem)
    (folder / "object.bin").write_bytes(bytes(blob))
    capsys.readouterr()
    code = cli.main(
        [
            "decrypt",
            "--private-key",
            str(folder / "key.pem"),
            "--details",
            json.dumps(sealed.details.to_twilio()),
            str(folder / "object.bin"),
            str(folder / "out" / "call.wav"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1, err
    assert out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith(DECRYPT_ERROR), err
    assert list((folder / "out").iterdir()) == [], "no output and no .part file"


def test_decrypt_object_with_bytes_appended(ws: Workspace) -> None:
    path = ws.write_input("longer.bin", ws.sealed.blob + b"\0")
    _assert_failed(_decrypt(ws, obj=path), ws, 1, "authentication failed")


def test_decrypt_with_the_wrong_private_key(ws: Workspace) -> None:
    other = ws.write_input("other.pem", key_pair(3072).private_pem)
    message = _assert_failed(_decrypt(ws, private_key=other), ws, 1, "wrong private key")
    body = key_pair(3072).private_pem.decode().splitlines()[1]
    assert body[:16] not in message


def test_decrypt_with_a_private_key_file_that_is_no_key(ws: Workspace) -> None:
    for name, data in [
        ("public.pem", ws.sealed.pair.public_pem),
        ("garbage.pem", b"\x00\xffnot a key at all"),
        ("empty.pem", b""),
    ]:
        path = ws.write_input(name, data)
        _assert_failed(_decrypt(ws, private_key=path), ws, 1, "could not be loaded")


def test_decrypt_with_a_locked_key_and_no_or_a_wrong_password(ws: Workspace) -> None:
    key = serialization.load_pem_private_key(ws.sealed.pair.private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    locked = ws.write_input(
        "locked.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        ),
    )
    _assert_failed(_decrypt(ws, private_key=locked), ws, 1, "password")
    wrong = _assert_failed(
        _decrypt(ws, private_key=locked, password="not the password"), ws, 1, "could not be loaded"
    )
    assert "not the password" not in wrong
    # an unencrypted key with a password set is refused too, and says why
    _assert_failed(_decrypt(ws, password=PASSWORD), ws, 1, "password")


def test_decrypt_with_a_password_that_is_not_utf8(ws: Workspace) -> None:
    """A password from a Latin-1 terminal reaches Python as surrogate escapes; the command
    must pass the original bytes (or refuse in one line), never crash."""
    key = serialization.load_pem_private_key(ws.sealed.pair.private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    latin1 = "pässwörd".encode("latin-1")
    locked = ws.write_input(
        "locked.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(latin1),
        ),
    )
    proc = _decrypt(ws, private_key=locked, password=latin1)
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        _assert_decrypted(proc, ws)
    else:
        _assert_failed(proc, ws, 1)


# --- decrypt: usage errors (exit 2) --------------------------------------------------


def _without(data: dict[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in data.items() if k != key}


# (id, --details built from the real camelCase details, a word the message must contain)
DETAILS_CASES: list[tuple[str, Callable[[dict[str, str]], str], str]] = [
    ("not-json", lambda _: "{not json", "not valid JSON"),
    ("cut-json", lambda d: json.dumps(d)[:-2], "not valid JSON"),
    ("trailing-garbage", lambda d: json.dumps(d) + " x", "not valid JSON"),
    ("empty-object", lambda _: "{}", "type must be"),
    ("missing-iv", lambda d: json.dumps(_without(d, "iv")), "lack 'iv'"),
    ("missing-cek", lambda d: json.dumps(_without(d, "encryptedCek")), "lack 'encryptedCek'"),
    ("missing-type", lambda d: json.dumps(_without(d, "type")), "type must be"),
    ("wrong-type", lambda d: json.dumps(d | {"type": "aes-rsa"}), "type must be"),
    ("bad-base64-cek", lambda d: json.dumps(d | {"encryptedCek": "not*base64"}), "base64"),
    ("iv-16-bytes", lambda d: json.dumps(d | {"iv": base64.b64encode(b"0" * 16).decode()}), "12"),
    ("bad-sid", lambda d: json.dumps(d | {"publicKeySid": "PK1"}), "publicKeySid"),
    ("number-as-value", lambda d: json.dumps(d | {"iv": 12}), "must be a string"),
    ("null-value", lambda d: json.dumps(d | {"encryptedCek": None}), "must be a string"),
    (
        "conflicting-forms",
        lambda d: json.dumps(d | {"encrypted_cek": "QUJD"}),
        "different values",
    ),
]


@pytest.mark.parametrize(("build", "word"), [pytest.param(b, w, id=i) for i, b, w in DETAILS_CASES])
def test_decrypt_malformed_details(
    ws: Workspace, build: Callable[[dict[str, str]], str], word: str
) -> None:
    _assert_failed(_decrypt(ws, build(ws.sealed.details.to_status())), ws, 2, word)


def test_decrypt_details_with_a_huge_wrapped_key(ws: Workspace) -> None:
    """Well-formed details whose encryptedCek is no wrap: a decryption failure, and the
    message does not echo 100 kB of input."""
    details = ws.sealed.details.to_status() | {"encryptedCek": "A" * 100_000}
    proc = _decrypt(ws, json.dumps(details))
    _assert_failed(proc, ws, 1, "corrupted encryptedCek")
    assert len(proc.stderr) < 400


def test_decrypt_details_file_with_an_array_or_garbage(ws: Workspace) -> None:
    array = ws.write_input("array.json", json.dumps([ws.sealed.details.to_status()]))
    _assert_failed(_decrypt(ws, array), ws, 2, "must be a JSON object")
    binary = ws.write_input("binary.json", b"\xff\xfe\x00garbage")
    _assert_failed(_decrypt(ws, binary), ws, 2, "not valid JSON")
    empty = ws.write_input("empty.json", b"")
    _assert_failed(_decrypt(ws, empty), ws, 2, "not valid JSON")


def test_decrypt_details_that_are_neither_json_nor_a_file(ws: Workspace) -> None:
    # an inline array does not start with '{', so it is taken as a file name
    _assert_failed(_decrypt(ws, json.dumps([1, 2])), ws, 2, "cannot read details file")
    _assert_failed(_decrypt(ws, ws.inputs / "missing.json"), ws, 2, "cannot read details file")
    _assert_failed(_decrypt(ws, ws.inputs), ws, 2, "cannot read details file")
    _assert_failed(_decrypt(ws, "x" * 5000), ws, 2, "cannot read details file")


def test_decrypt_details_pasted_as_yaml(ws: Workspace) -> None:
    """`kubectl get -o yaml` output pasted instead of JSON: one line, not the paste."""
    yaml_text = "\n".join(f"{k}: {v}" for k, v in ws.sealed.details.to_status().items())
    _assert_failed(_decrypt(ws, yaml_text), ws, 2)


def test_decrypt_details_with_a_huge_number(ws: Workspace) -> None:
    """Python refuses to parse integers over 4300 digits with a plain ValueError."""
    _assert_failed(_decrypt(ws, '{"type": ' + "9" * 5000 + "}"), ws, 2)


def test_decrypt_details_nested_too_deep(ws: Workspace) -> None:
    """json.loads raises RecursionError on deep nesting, which is not a JSONDecodeError."""
    depth = 20_000
    text = '{"type": ' + "[" * depth + "]" * depth + "}"
    _assert_failed(_decrypt(ws, text), ws, 2)
    path = ws.write_input("deep.json", text)
    _assert_failed(_decrypt(ws, path), ws, 2)


def test_decrypt_missing_or_unreadable_inputs(ws: Workspace) -> None:
    _assert_failed(_decrypt(ws, obj=ws.inputs / "nope.bin"), ws, 2, "cannot read", "nope.bin")
    _assert_failed(
        _decrypt(ws, private_key=ws.inputs / "nope.pem"), ws, 2, "cannot read private key"
    )
    # a folder where a file belongs (tests run as root here, so chmod 000 would not stop
    # a read; a folder cannot be read as a file by anyone)
    _assert_failed(_decrypt(ws, private_key=ws.inputs), ws, 2, "cannot read private key")


def test_decrypt_object_that_is_a_folder(ws: Workspace) -> None:
    folder = ws.inputs / "folder.bin"
    folder.mkdir()
    message = _assert_failed(_decrypt(ws, obj=folder), ws, 1)
    assert "folder.bin" in message


def test_decrypt_argument_errors_exit_2(ws: Workspace) -> None:
    proc = _run("decrypt", "--private-key", ws.private_key, ws.obj, ws.output)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("voicevault decrypt: error: ")
    assert "--details" in proc.stderr
    assert list(ws.out_dir.iterdir()) == []


# --- decrypt: the output --------------------------------------------------------------


@pytest.mark.parametrize("damage", ["tampered", "truncated", "wrong-key", "bad-details"])
def test_a_failed_decryption_does_not_clobber_an_existing_output(
    ws: Workspace, damage: str
) -> None:
    ws.output.write_bytes(b"an earlier, good decryption")
    blob = bytearray(ws.sealed.blob)
    obj, private_key, details = ws.obj, ws.private_key, None
    if damage == "tampered":
        blob[10] ^= 0x20
        obj = ws.write_input("tampered.bin", bytes(blob))
    elif damage == "truncated":
        obj = ws.write_input("cut.bin", bytes(blob[:-3]))
    elif damage == "wrong-key":
        private_key = ws.write_input("other.pem", key_pair(3072).private_pem)
    else:
        details = '{"type": "rsa-aes"}'
    proc = _decrypt(ws, details, obj=obj, private_key=private_key)
    assert proc.returncode in (1, 2), proc.stderr
    _assert_one_line_error(proc, DECRYPT_ERROR)
    assert ws.output.read_bytes() == b"an earlier, good decryption"
    assert [p.name for p in ws.out_dir.iterdir()] == ["call.wav"], "no .part file left"


def test_a_successful_decryption_replaces_an_existing_output(ws: Workspace) -> None:
    ws.output.write_bytes(b"stale")
    _assert_decrypted(_decrypt(ws), ws)


def test_decrypt_into_a_missing_folder_or_onto_a_folder(ws: Workspace) -> None:
    missing = _decrypt(ws, output=ws.out_dir / "no" / "such" / "call.wav")
    assert missing.returncode == 1
    _assert_one_line_error(missing, DECRYPT_ERROR)
    assert not (ws.out_dir / "no").exists()
    target = ws.out_dir / "a-folder"
    target.mkdir()
    onto = _decrypt(ws, output=target)
    assert onto.returncode == 1
    _assert_one_line_error(onto, DECRYPT_ERROR)
    assert [p.name for p in ws.out_dir.iterdir()] == ["a-folder"], "no .part file left"
    assert list(target.iterdir()) == []


# --- upload: usage errors, before any network use -------------------------------------


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    # `run` calls logging.basicConfig; under pytest the root logger already has handlers,
    # so it is a no-op, but keep it from ever binding to the captured stderr
    monkeypatch.setattr("logging.basicConfig", lambda **_: None)


def _fake_credentials_and_no_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials that would pass the usage checks, and a tripwire on the S3 client."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-never-used-0000000000000000")

    def no_client(*_: object, **__: object) -> None:
        raise AssertionError("an S3 client was built before the usage checks finished")

    monkeypatch.setattr("voicevault.uploader.upload_command.make_client", no_client)


def _upload_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Dispatch through voicevault.cli.main, as the console script does."""
    capsys.readouterr()
    try:
        code = cli.main(["upload", *argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def _check_usage_error(code: int, out: str, err: str) -> str:
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(UPLOAD_ERROR), err
    assert out == ""
    return lines[0].removeprefix(UPLOAD_ERROR)


URL_PIECES = [
    "https://",
    "http://",
    "s3://",
    "ftp://",
    "bucket",
    "b",
    "my_bucket",
    ".s3.",
    "s3.",
    "s3-",
    "us-east-1",
    "cn-north-1",
    "amazonaws.com",
    ".amazonaws.com.cn",
    "/",
    "//",
    "/..",
    "/./",
    "%",
    "%zz",
    "%ff",
    "%2F",
    "@",
    "user:pw@",
    ":",
    ":443",
    ":99999",
    ":-1",
    "[",
    "]",
    "[::1]",
    "?",
    "#",
    " ",
    "\t",
    "\u0000",
    "\u200b",
    "\uff0e",
    "é",
    "\u2100",
    "A" * 70,
    "1.2.3.4",
    "localhost",
]
junk_urls = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(URL_PIECES), max_size=10).map("".join),
    st.lists(st.sampled_from(URL_PIECES) | st.text(max_size=4), max_size=8).map("".join),
)
junk_region = st.none() | st.sampled_from(["us-east-1", "cn-north-1", "US-EAST-1", "", "x"])
junk_endpoint = st.none() | junk_urls | st.sampled_from(["http://127.0.0.1:9", "https://[::1]"])


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(url=junk_urls, region=junk_region, endpoint=junk_endpoint)
@example(url="https://bucket.s3.us-east-1.amazonaws.com/calls/", region=None, endpoint=None)
@example(url="https://[::1", region=None, endpoint=None)
@example(url="https://bucket.s3.amazonaws.com:99999/", region=None, endpoint=None)
@example(url="https://b\uff0ecom/", region=None, endpoint=None)
@example(url="-starts-with-a-dash", region=None, endpoint="-dash")
def test_upload_junk_bucket_urls_are_usage_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_aws: None,
    url: str,
    region: str | None,
    endpoint: str | None,
) -> None:
    media = tmp_path / "call.wav"
    media.write_bytes(b"RIFF")
    argv = [str(media), f"--bucket-url={url}"]
    if region is not None:
        argv.append(f"--region={region}")
    if endpoint is not None:
        argv.append(f"--endpoint-url={endpoint}")
    message = _check_usage_error(*_upload_in_process(argv, capsys))
    assert len(message) < 600, "the message does not run on"


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        pytest.param(["--account-sid", "AC" + "0" * 32], "together", id="sid-without-recording"),
        pytest.param(
            ["--key", "x", "--account-sid", "AC1", "--recording-sid", "RE1"],
            "either",
            id="key-and-sids",
        ),
        pytest.param(["--part-size", "4"], "part-size", id="part-too-small"),
        pytest.param(["--concurrency", "0"], "concurrency", id="no-concurrency"),
        pytest.param(["--public-key-sid", "CR1"], "needs --public-key", id="sid-without-key"),
        pytest.param(["--region", "mars-1"], "region", id="bad-region"),
        pytest.param(["--endpoint-url", "http://h/path"], "endpoint", id="endpoint-with-path"),
        pytest.param([], "AWS_ACCESS_KEY_ID", id="no-credentials"),
    ],
)
def test_upload_argument_errors_in_process(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_aws: None,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    word: str,
) -> None:
    media = tmp_path / "call.wav"
    media.write_bytes(b"RIFF")
    if word != "AWS_ACCESS_KEY_ID":
        # with credentials set, each mistake is still caught before any client exists
        _fake_credentials_and_no_client(monkeypatch)
    argv = [str(media), "--bucket-url", "https://bucket.s3.us-east-1.amazonaws.com/calls/"]
    message = _check_usage_error(*_upload_in_process([*argv, *extra], capsys))
    assert word in message


def test_upload_missing_file_and_unreadable_public_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_aws: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "--bucket-url=https://bucket.s3.amazonaws.com/"
    message = _check_usage_error(*_upload_in_process([str(tmp_path / "nope.wav"), url], capsys))
    assert "no such file" in message
    folder = _check_usage_error(*_upload_in_process([str(tmp_path), url], capsys))
    assert "no such file" in folder
    media = tmp_path / "call.wav"
    media.write_bytes(b"RIFF")
    _fake_credentials_and_no_client(monkeypatch)
    missing_key = _check_usage_error(
        *_upload_in_process([str(media), url, "--public-key", str(tmp_path / "nope.pem")], capsys)
    )
    assert "nope.pem" in missing_key


def test_upload_public_key_that_is_no_key_is_fatal_before_any_request(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_aws: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """16104 is decided locally: exit 3 without ever building an S3 client."""
    media = tmp_path / "call.wav"
    media.write_bytes(b"RIFF")
    pem = tmp_path / "key.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    _fake_credentials_and_no_client(monkeypatch)
    code, out, err = _upload_in_process(
        [str(media), "--bucket-url=https://bucket.s3.amazonaws.com/", "--public-key", str(pem)],
        capsys,
    )
    assert code == 3, err
    assert out == ""
    assert err.splitlines() == [err.strip()]
    assert "16104" in err and "not retryable" in err
    assert "fake-secret" not in err


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "https://bucket.s3.us-east-1.amazonaws.com/a//b/",
        "https://user:pw@bucket.s3.amazonaws.com/",
        "https://x.s3.amazonaws.com/",
    ],
)
def test_upload_usage_errors_as_a_user_runs_them(tmp_path: Path, url: str) -> None:
    """A few of the above through a real process: one line on stderr, exit 2."""
    media = tmp_path / "call.wav"
    media.write_bytes(b"RIFF")
    proc = _run("upload", media, "--bucket-url", url)
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc, UPLOAD_ERROR)
    assert "user:pw" not in proc.stderr


def test_upload_bucket_url_that_is_not_utf8(tmp_path: Path) -> None:
    """A byte that is not UTF-8 arrives as a surrogate escape in argv."""
    media = tmp_path / "call.wav"
    media.write_bytes(b"RIFF")
    proc = subprocess.run(
        [
            os.fsencode(sys.executable),
            b"-m",
            b"voicevault",
            b"upload",
            os.fsencode(media),
            b"--bucket-url",
            b"https://bu\xffcket.s3.amazonaws.com/",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc, UPLOAD_ERROR)


# --- help and unknown commands ---------------------------------------------------------


@pytest.mark.parametrize(
    "command", [None, "upload", "decrypt", "retry", "crds", "operator", "uploader"]
)
def test_help_exits_0_and_prints_usage(command: str | None) -> None:
    proc = _run(*([command] if command else []), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    prog = "voicevault" + (f" {command}" if command else "")
    assert proc.stdout.startswith(f"usage: {prog}"), proc.stdout[:200]
    if command is None:
        for name in cli.COMMANDS:
            assert name in proc.stdout


@pytest.mark.parametrize("argv", [["frobnicate"], ["Decrypt"], ["upload2", "--help"]])
def test_unknown_command_exits_2(argv: list[str]) -> None:
    proc = _run(*argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "invalid choice" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("voicevault: error: ")


def test_no_command_exits_2_with_usage() -> None:
    proc = _run()
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "usage: voicevault" in proc.stderr
