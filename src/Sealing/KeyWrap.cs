using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace SEmigrate.Sealing;

/// <summary>Wraps a data key for one host's key pair (ECIES: ephemeral ECDH P-256, HKDF-SHA256,
/// AES-256-GCM), bound to a context (migration and host), so only the wrapped form ever travels and
/// only that host can unwrap it. Format: version (1), public-key length (2), the ephemeral public key
/// (SubjectPublicKeyInfo), nonce (12), wrapped key (32), tag (16). Version 2 also proves who wrapped it:
/// its key-encryption key comes from both the ephemeral and the sender's own key pair agreeing with the
/// recipient's (one-pass unified ECDH, as HPKE's auth mode), so it unwraps only with the sender's public
/// key pinned by the recipient: nobody else can make a key the recipient takes as the sender's.</summary>
public static class KeyWrap
{
    private const byte Version = 1;
    private const byte FromSender = 2;

    public static byte[] Wrap(DataKey key, ReadOnlySpan<byte> recipientPublicKey, string context) => WrapSecret(key.Bytes, recipientPublicKey, context);

    /// <summary>A data key for <paramref name="recipientPublicKey"/> that only <paramref name="sender"/> could have wrapped.</summary>
    public static byte[] WrapFrom(DataKey key, HostKeyPair sender, ReadOnlySpan<byte> recipientPublicKey, string context) =>
        WrapSecret(key.Bytes, recipientPublicKey, context, sender);

    /// <summary>Opens a key wrapped by <see cref="WrapFrom"/>, only if <paramref name="senderPublicKey"/>'s holder wrapped it.</summary>
    public static DataKey UnwrapFrom(ReadOnlySpan<byte> wrapped, HostKeyPair recipient, ReadOnlySpan<byte> senderPublicKey, string context) =>
        AsKey(UnwrapSecret(wrapped, recipient, context, senderPublicKey.ToArray()));

    public static DataKey Unwrap(ReadOnlySpan<byte> wrapped, HostKeyPair recipient, string context) => AsKey(UnwrapSecret(wrapped, recipient, context));

    /// <summary>The unwrapped bytes as a key; the bytes are wiped.</summary>
    private static DataKey AsKey(byte[] secret)
    {
        try
        {
            return DataKey.FromBytes(secret);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(secret);
        }
    }

    /// <summary>Wraps any 32-byte secret (a data key, a memory server's capability for a VM) the same way.</summary>
    public static byte[] WrapSecret(ReadOnlySpan<byte> secret, ReadOnlySpan<byte> recipientPublicKey, string context, HostKeyPair? sender = null)
    {
        if (secret.Length != DataKey.Size)
        {
            throw new ArgumentException($"a wrapped secret is {DataKey.Size} bytes, not {secret.Length}", nameof(secret));
        }
        using var recipient = ECDiffieHellman.Create();
        recipient.ImportSubjectPublicKeyInfo(recipientPublicKey, out _);
        using var ephemeral = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256);
        var ephemeralPublic = ephemeral.ExportSubjectPublicKeyInfo();
        var kek = Kek(ephemeral.DeriveRawSecretAgreement(recipient.PublicKey), sender?.Agree(recipient.PublicKey), ephemeralPublic, context);
        var wrapped = new byte[3 + ephemeralPublic.Length + 12 + DataKey.Size + 16];
        wrapped[0] = sender is null ? Version : FromSender;
        BinaryPrimitives.WriteUInt16LittleEndian(wrapped.AsSpan(1), (ushort)ephemeralPublic.Length);
        ephemeralPublic.CopyTo(wrapped, 3);
        var rest = wrapped.AsSpan(3 + ephemeralPublic.Length);
        RandomNumberGenerator.Fill(rest[..12]); // one encryption per fresh KEK: a random nonce is safe
        using var aes = new AesGcm(kek, 16);
        aes.Encrypt(rest[..12], secret, rest.Slice(12, DataKey.Size), rest[^16..], Encoding.UTF8.GetBytes(context));
        CryptographicOperations.ZeroMemory(kek);
        return wrapped;
    }

    /// <summary>Opens a wrapped secret; with <paramref name="senderPublicKey"/>, only one that key's holder wrapped
    /// (version 2), and without, only an unauthenticated one (version 1): neither is taken for the other.</summary>
    public static byte[] UnwrapSecret(ReadOnlySpan<byte> wrapped, HostKeyPair recipient, string context, byte[]? senderPublicKey = null)
    {
        if (wrapped.Length < 3 || wrapped[0] != (senderPublicKey is null ? Version : FromSender))
        {
            throw new CryptographicException(senderPublicKey is null ? "not a wrapped data key (or an unknown version)"
                : "not a data key wrapped by its sender's own key (version 2)");
        }
        var publicLength = BinaryPrimitives.ReadUInt16LittleEndian(wrapped[1..]);
        if (wrapped.Length != 3 + publicLength + 12 + DataKey.Size + 16)
        {
            throw new CryptographicException("wrapped data key has the wrong length");
        }
        var ephemeralPublic = wrapped.Slice(3, publicLength);
        using var ephemeral = ECDiffieHellman.Create();
        ephemeral.ImportSubjectPublicKeyInfo(ephemeralPublic, out _);
        if (ephemeral.ExportParameters(false).Curve.Oid?.Value != "1.2.840.10045.3.1.7")
        {
            throw new CryptographicException("the wrapped key's ephemeral key is not on P-256"); // agreement with our P-256 key would throw otherwise
        }
        byte[]? fromSender = null;
        if (senderPublicKey is not null)
        {
            using var sender = ECDiffieHellman.Create();
            sender.ImportSubjectPublicKeyInfo(senderPublicKey, out _);
            fromSender = recipient.Agree(sender.PublicKey);
        }
        var kek = Kek(recipient.Agree(ephemeral.PublicKey), fromSender, ephemeralPublic.ToArray(), context);
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

    private static byte[] Kek(byte[] secret, byte[]? fromSender, byte[] ephemeralPublic, string context)
    {
        if (fromSender is null)
        {
            var info = Encoding.UTF8.GetBytes("SEmigrate key wrap v1|" + context);
            var kek = HKDF.DeriveKey(HashAlgorithmName.SHA256, secret, 32, ephemeralPublic, info);
            CryptographicOperations.ZeroMemory(secret);
            return kek;
        }
        var both = new byte[secret.Length + fromSender.Length];
        secret.CopyTo(both, 0);
        fromSender.CopyTo(both, secret.Length);
        var authenticated = HKDF.DeriveKey(HashAlgorithmName.SHA256, both, 32, ephemeralPublic, Encoding.UTF8.GetBytes("SEmigrate key wrap v2|" + context));
        CryptographicOperations.ZeroMemory(secret);
        CryptographicOperations.ZeroMemory(fromSender);
        CryptographicOperations.ZeroMemory(both);
        return authenticated;
    }
}
