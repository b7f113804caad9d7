using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace SEmigrate.Sealing;

/// <summary>Wraps a data key for one host's key pair (ECIES: ephemeral ECDH P-256, HKDF-SHA256,
/// AES-256-GCM), bound to a context (migration and host), so only the wrapped form ever travels and
/// only that host can unwrap it. Format: version (1), public-key length (2), the ephemeral public key
/// (SubjectPublicKeyInfo), nonce (12), wrapped key (32), tag (16).</summary>
public static class KeyWrap
{
    private const byte Version = 1;

    public static byte[] Wrap(DataKey key, ReadOnlySpan<byte> recipientPublicKey, string context) => WrapSecret(key.Bytes, recipientPublicKey, context);

    public static DataKey Unwrap(ReadOnlySpan<byte> wrapped, HostKeyPair recipient, string context)
    {
        var key = UnwrapSecret(wrapped, recipient, context);
        try
        {
            return DataKey.FromBytes(key);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(key);
        }
    }

    /// <summary>Wraps any 32-byte secret (a data key, a memory server's capability for a VM) the same way.</summary>
    public static byte[] WrapSecret(ReadOnlySpan<byte> secret, ReadOnlySpan<byte> recipientPublicKey, string context)
    {
        if (secret.Length != DataKey.Size)
        {
            throw new ArgumentException($"a wrapped secret is {DataKey.Size} bytes, not {secret.Length}", nameof(secret));
        }
        using var recipient = ECDiffieHellman.Create();
        recipient.ImportSubjectPublicKeyInfo(recipientPublicKey, out _);
        using var ephemeral = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256);
        var ephemeralPublic = ephemeral.ExportSubjectPublicKeyInfo();
        var kek = Kek(ephemeral.DeriveRawSecretAgreement(recipient.PublicKey), ephemeralPublic, context);
        var wrapped = new byte[3 + ephemeralPublic.Length + 12 + DataKey.Size + 16];
        wrapped[0] = Version;
        BinaryPrimitives.WriteUInt16LittleEndian(wrapped.AsSpan(1), (ushort)ephemeralPublic.Length);
        ephemeralPublic.CopyTo(wrapped, 3);
        var rest = wrapped.AsSpan(3 + ephemeralPublic.Length);
        RandomNumberGenerator.Fill(rest[..12]); // one encryption per fresh KEK: a random nonce is safe
        using var aes = new AesGcm(kek, 16);
        aes.Encrypt(rest[..12], secret, rest.Slice(12, DataKey.Size), rest[^16..], Encoding.UTF8.GetBytes(context));
        CryptographicOperations.ZeroMemory(kek);
        return wrapped;
    }

    public static byte[] UnwrapSecret(ReadOnlySpan<byte> wrapped, HostKeyPair recipient, string context)
    {
        if (wrapped.Length < 3 || wrapped[0] != Version)
        {
            throw new CryptographicException("not a wrapped data key (or an unknown version)");
        }
        var publicLength = BinaryPrimitives.ReadUInt16LittleEndian(wrapped[1..]);
        if (wrapped.Length != 3 + publicLength + 12 + DataKey.Size + 16)
        {
            throw new CryptographicException("wrapped data key has the wrong length");
        }
        var ephemeralPublic = wrapped.Slice(3, publicLength);
        using var ephemeral = ECDiffieHellman.Create();
        ephemeral.ImportSubjectPublicKeyInfo(ephemeralPublic, out _);
        var kek = Kek(recipient.Agree(ephemeral.PublicKey), ephemeralPublic.ToArray(), context);
        var rest = wrapped[(3 + publicLength)..];
        var key = new byte[DataKey.Size];
        using var aes = new AesGcm(kek, 16);
        try
        {
            aes.Decrypt(rest[..12], rest.Slice(12, DataKey.Size), rest[^16..], key, Encoding.UTF8.GetBytes(context));
        }
        catch (AuthenticationTagMismatchException)
        {
            throw new CryptographicException("the data key was not wrapped for this host and context, or was altered");
        }
        finally
        {
            CryptographicOperations.ZeroMemory(kek);
        }
        return key;
    }

    private static byte[] Kek(byte[] secret, byte[] ephemeralPublic, string context)
    {
        var info = Encoding.UTF8.GetBytes("SEmigrate key wrap v1|" + context);
        var kek = HKDF.DeriveKey(HashAlgorithmName.SHA256, secret, 32, ephemeralPublic, info);
        CryptographicOperations.ZeroMemory(secret);
        return kek;
    }
}
