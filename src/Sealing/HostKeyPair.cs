using System.Security.Cryptography;

namespace SEmigrate.Sealing;

/// <summary>A host's own key pair (ECDH P-256), its identity: the operator enrols and pins its public key,
/// and data keys, memory servers' capabilities and allenc channel keys are wrapped for it. The private key stays on the host (a
/// file of mode 0600); only the public key is published.</summary>
public sealed class HostKeyPair : IDisposable
{
    private readonly ECDiffieHellman ecdh;

    private HostKeyPair(ECDiffieHellman ecdh) => this.ecdh = ecdh;

    public static HostKeyPair Generate() => new(ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256));

    /// <summary>Loads the pair from <paramref name="path"/> (PKCS#8), creating it on first use.</summary>
    public static HostKeyPair LoadOrCreate(string path)
    {
        var ecdh = ECDiffieHellman.Create();
        if (File.Exists(path))
        {
            ecdh.ImportPkcs8PrivateKey(File.ReadAllBytes(path), out _);
            return new HostKeyPair(ecdh);
        }
        ecdh.Dispose();
        var pair = Generate();
        if (!PrivateFile.Write(path, pair.ecdh.ExportPkcs8PrivateKey(), overwrite: false))
        {
            pair.Dispose(); // another process made it first: that one is the host's key
            return LoadOrCreate(path);
        }
        return pair;
    }

    public byte[] PublicKey => ecdh.ExportSubjectPublicKeyInfo();

    /// <summary>A public key's fingerprint, for people and messages: the first 8 bytes of its SHA-256, in hex.</summary>
    public static string Fingerprint(ReadOnlySpan<byte> publicKey) => Convert.ToHexString(SHA256.HashData(publicKey).AsSpan(0, 8));

    internal byte[] Agree(ECDiffieHellmanPublicKey other) => ecdh.DeriveRawSecretAgreement(other);

    /// <summary>A statement that only this host and the holder of <paramref name="peerPublicKey"/> can make: an
    /// HMAC under their static ECDH agreement. The peer checks it by making it too, with its own key pair
    /// and this host's pinned public key; nobody else can.</summary>
    public byte[] Vouch(ReadOnlySpan<byte> peerPublicKey, string statement)
    {
        using var peer = ECDiffieHellman.Create();
        peer.ImportSubjectPublicKeyInfo(peerPublicKey, out _);
        var secret = Agree(peer.PublicKey);
        var key = HKDF.DeriveKey(HashAlgorithmName.SHA256, secret, 32, [], System.Text.Encoding.ASCII.GetBytes("SEmigrate host statement v1"));
        CryptographicOperations.ZeroMemory(secret);
        var mac = HMACSHA256.HashData(key, System.Text.Encoding.UTF8.GetBytes(statement));
        CryptographicOperations.ZeroMemory(key);
        return mac;
    }

    /// <summary>The host's ECDSA signature over <paramref name="data"/>, made with the same P-256 key (so the
    /// operator's enrolment pins it too): the host signs the events it raises. Every statement signed
    /// starts with a label of its own, and the ECDH uses above go through HKDF, so no signature doubles
    /// as anything else.</summary>
    public byte[] Sign(ReadOnlySpan<byte> data)
    {
        lock (ecdh)
        {
            signer ??= ECDsa.Create(ecdh.ExportParameters(includePrivateParameters: true)); // once: no copies of the key left about
            return signer.SignData(data, HashAlgorithmName.SHA256);
        }
    }

    private ECDsa? signer;

    public void Dispose()
    {
        ecdh.Dispose();
        signer?.Dispose();
    }
}
