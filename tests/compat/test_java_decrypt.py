"""Objects voicevault encrypts open with a Twilio-style Java/BouncyCastle decryptor.

Twilio documents decryption in Java with BouncyCastle's
`RSA/ECB/OAEPWithSHA256AndMGF1Padding` and `AES/GCM/NoPadding`. That provider's OAEP
name means SHA-256 for MGF1 too (the JDK's own provider would use MGF1-SHA1), so this
is the combination that proves customers' Java tooling works unchanged. The
BouncyCastle jar comes from Maven Central once and is cached under
`$VOICEVAULT_CACHE` (default `~/.cache/voicevault`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from voicevault.uploader.envelope import (
    EncryptionDetails,
    StreamEncryptor,
    new_content_key,
    seal_content_key,
)

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
VECTORS = HERE.parent / "unit" / "vectors"
BC_VERSION = "1.87"
BC_ARTIFACT = f"org.bouncycastle:bcprov-jdk18on:{BC_VERSION}"
BC_JAR = f"bcprov-jdk18on-{BC_VERSION}.jar"
# sha256 of the jar as served by Maven Central (its published sha1 is
# 3cf2bbc1280a743fd3d4d7d556883c13e5d28be5); a different file is never used.
BC_SHA256 = "12d2d3dd82a9ec15e92ec7c7943ee64f6097c6dc12c07e984f1693b77565b9aa"
TOOL_TIMEOUT_S = 600


@dataclass(frozen=True)
class JavaDecryptor:
    java: str
    classpath: str

    def run(
        self, key_pem: Path, details: EncryptionDetails, src: Path, dst: Path
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.java, "-cp", self.classpath, "TwilioStyleDecrypt", str(key_pem)]
        argv += [details.encrypted_cek, details.iv, str(src), str(dst)]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )


def _cache_root() -> Path:
    override = os.environ.get("VOICEVAULT_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "voicevault"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch_bcprov(mvn: str) -> Path:
    """The pinned BouncyCastle jar, fetched with Maven once and then reused."""
    target = _cache_root() / f"bcprov-jdk18on-{BC_VERSION}" / BC_JAR
    if target.is_file() and _sha256(target) == BC_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as staging:
        argv = [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={BC_ARTIFACT}"]
        done = subprocess.run(
            [*argv, f"-DoutputDirectory={staging}"],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
        fetched = Path(staging) / BC_JAR
        if done.returncode != 0 or not fetched.is_file():
            pytest.fail(f"could not fetch {BC_ARTIFACT} with Maven:\n{done.stdout[-3000:]}")
        if _sha256(fetched) != BC_SHA256:
            pytest.fail(f"{BC_ARTIFACT} from Maven has an unexpected sha256; refusing it")
        os.replace(fetched, target)  # atomic: concurrent workers never see half a jar
    return target


@pytest.fixture(scope="module")
def java_decryptor(tmp_path_factory: pytest.TempPathFactory) -> JavaDecryptor:
    tools = {name: shutil.which(name) for name in ("java", "javac", "mvn")}
    missing = sorted(name for name, path in tools.items() if path is None)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")
    java, javac, mvn = (str(tools[name]) for name in ("java", "javac", "mvn"))
    jar = _fetch_bcprov(mvn)
    classes = tmp_path_factory.mktemp("java-classes")
    source = HERE / "TwilioStyleDecrypt.java"
    compiled = subprocess.run(
        [javac, "-Xlint:all", "-Werror", "-cp", str(jar), "-d", str(classes), str(source)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr
    return JavaDecryptor(java, f"{classes}{os.pathsep}{jar}")


def _write_pkcs8(key: rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _encrypt_file(
    public_key: rsa.RSAPublicKey, src: Path, dst: Path, chunk: int = 64 * 1024
) -> EncryptionDetails:
    """Encrypt as the uploader does: stream chunks, then append the tag."""
    content_key = new_content_key()
    encryptor = StreamEncryptor(content_key)
    with src.open("rb") as inp, dst.open("wb") as out:
        while block := inp.read(chunk):
            out.write(encryptor.update(block))
        out.write(encryptor.finalize())
    return seal_content_key(public_key, content_key)


@pytest.mark.parametrize(
    ("key_bits", "size"),
    [(2048, 0), (2048, 1), (2048, 300_001), (4096, 2_000_003)],
)
def test_java_decrypts_what_python_encrypted(
    java_decryptor: JavaDecryptor, tmp_path: Path, key_bits: int, size: int
) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    plain = tmp_path / "recording.wav"
    plain.write_bytes(random.Random(size).randbytes(size))
    encrypted = tmp_path / "recording.wav.enc"
    details = _encrypt_file(private.public_key(), plain, encrypted)
    # Round-trip the details through Twilio's JSON form, as a callback delivers them.
    details = EncryptionDetails.from_mapping(json.loads(json.dumps(details.to_twilio())))
    out = tmp_path / "decrypted.wav"
    done = java_decryptor.run(_write_pkcs8(private, tmp_path / "key.pem"), details, encrypted, out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == plain.read_bytes()


def test_java_decrypts_the_committed_vector(java_decryptor: JavaDecryptor, tmp_path: Path) -> None:
    details = EncryptionDetails.from_mapping(
        json.loads((VECTORS / "rsa_aes_details.json").read_text())
    )
    out = tmp_path / "plain.bin"
    done = java_decryptor.run(
        VECTORS / "rsa_aes_test_key.pem", details, VECTORS / "rsa_aes_object.bin", out
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (VECTORS / "rsa_aes_plaintext.bin").read_bytes()


def test_java_rejects_a_tampered_object(java_decryptor: JavaDecryptor, tmp_path: Path) -> None:
    """Proves the Java side really checks the tag, so the passing cases mean something."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    plain = tmp_path / "recording.wav"
    plain.write_bytes(b"RIFF" + bytes(5000))
    encrypted = tmp_path / "recording.wav.enc"
    details = _encrypt_file(private.public_key(), plain, encrypted)
    tampered = bytearray(encrypted.read_bytes())
    tampered[100] ^= 0x80
    encrypted.write_bytes(bytes(tampered))
    done = java_decryptor.run(
        _write_pkcs8(private, tmp_path / "key.pem"), details, encrypted, tmp_path / "out"
    )
    assert done.returncode == 1
    assert "tag mismatch" in done.stderr
