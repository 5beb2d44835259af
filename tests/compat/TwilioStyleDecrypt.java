import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.PrivateKey;
import java.security.Security;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.Base64;
import javax.crypto.Cipher;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.SecretKeySpec;
import org.bouncycastle.jce.provider.BouncyCastleProvider;

/**
 * Opens an rsa-aes recording object the way Twilio's Java decryption sample does, so the
 * voicevault tests can prove a customer's existing Java tooling works unchanged.
 *
 * <p>Steps: unwrap the content key with BouncyCastle's
 * "RSA/ECB/OAEPWithSHA256AndMGF1Padding" (SHA-256 for both OAEP and MGF1), then decrypt
 * with "AES/GCM/NoPadding" and a 128-bit tag, which JCE reads from the end of the input.
 *
 * <p>Usage: TwilioStyleDecrypt PRIVATE_KEY_PKCS8_PEM ENCRYPTED_CEK_BASE64 IV_BASE64 INPUT
 * OUTPUT. Exits 1 when the key or the object is wrong, 2 on bad usage.
 */
public final class TwilioStyleDecrypt {
  private static final int TAG_BITS = 128;
  private static final int BUFFER_SIZE = 64 * 1024;

  private TwilioStyleDecrypt() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 5) {
      System.err.println(
          "usage: TwilioStyleDecrypt PRIVATE_KEY_PKCS8_PEM ENCRYPTED_CEK_BASE64 IV_BASE64"
              + " INPUT OUTPUT");
      System.exit(2);
    }
    Security.addProvider(new BouncyCastleProvider());
    PrivateKey privateKey = readPkcs8Pem(Path.of(args[0]));
    byte[] contentKey = unwrapContentKey(privateKey, Base64.getDecoder().decode(args[1]));
    byte[] iv = Base64.getDecoder().decode(args[2]);
    try {
      decryptFile(contentKey, iv, Path.of(args[3]), Path.of(args[4]));
    } catch (javax.crypto.AEADBadTagException e) {
      System.err.println("tag mismatch: wrong key or modified object");
      System.exit(1);
    }
  }

  /** Reads an unencrypted PKCS#8 "BEGIN PRIVATE KEY" PEM file. */
  static PrivateKey readPkcs8Pem(Path path) throws Exception {
    String pem = Files.readString(path, StandardCharsets.US_ASCII);
    String body =
        pem.replace("-----BEGIN PRIVATE KEY-----", "")
            .replace("-----END PRIVATE KEY-----", "")
            .replaceAll("\\s", "");
    byte[] der = Base64.getDecoder().decode(body);
    return KeyFactory.getInstance("RSA").generatePrivate(new PKCS8EncodedKeySpec(der));
  }

  static byte[] unwrapContentKey(PrivateKey privateKey, byte[] encryptedCek) throws Exception {
    Cipher rsa = Cipher.getInstance("RSA/ECB/OAEPWithSHA256AndMGF1Padding", "BC");
    rsa.init(Cipher.DECRYPT_MODE, privateKey);
    return rsa.doFinal(encryptedCek);
  }

  static void decryptFile(byte[] contentKey, byte[] iv, Path input, Path output)
      throws Exception {
    Cipher aes = Cipher.getInstance("AES/GCM/NoPadding", "BC");
    aes.init(
        Cipher.DECRYPT_MODE,
        new SecretKeySpec(contentKey, "AES"),
        new GCMParameterSpec(TAG_BITS, iv));
    try (InputStream in = Files.newInputStream(input);
        OutputStream out = Files.newOutputStream(output)) {
      byte[] buffer = new byte[BUFFER_SIZE];
      int read;
      while ((read = in.read(buffer)) != -1) {
        byte[] plain = aes.update(buffer, 0, read);
        if (plain != null) {
          out.write(plain);
        }
      }
      out.write(aes.doFinal());
    }
  }
}
