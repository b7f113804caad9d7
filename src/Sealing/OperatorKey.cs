using System.Security.Cryptography;

namespace SEmigrate.Sealing;

/// <summary>The operator's signing key (ECDSA P-256): it signs migration requests, drain orders and host
/// enrolments; hosts pin its public key (setting Trust:OperatorKey) and check every step against what it
/// signed. The private key is a file of mode 0600, created so before a byte is written, and never leaves
/// the operator's machine.</summary>
public sealed class OperatorKey : IDisposable
{
    private readonly ECDsa ecdsa;

    private OperatorKey(ECDsa ecdsa, string? file = null) => (this.ecdsa, File) = (ecdsa, file);

    public static OperatorKey Generate() => new(ECDsa.Create(ECCurve.NamedCurves.nistP256));

    public static OperatorKey Load(string path)
    {
        var ecdsa = ECDsa.Create();
        ecdsa.ImportPkcs8PrivateKey(System.IO.File.ReadAllBytes(path), out _);
        return new OperatorKey(ecdsa, Path.GetFullPath(path));
    }

    /// <summary>The file the key was loaded from (what the operator keeps beside it lives there too); null for a key made in memory.</summary>
    public string? File { get; }

    /// <summary>Creates the key at <paramref name="path"/> unless one is there; returns whether it made one.</summary>
    public static bool Create(string path)
    {
        if (System.IO.File.Exists(path))
        {
            return false;
        }
        using var key = Generate();
        return PrivateFile.Write(path, key.ecdsa.ExportPkcs8PrivateKey(), overwrite: false); // two at once: the first one stays
    }

    /// <summary>The public key (SubjectPublicKeyInfo), what hosts pin.</summary>
    public byte[] PublicKey => ecdsa.ExportSubjectPublicKeyInfo();

    public byte[] Sign(ReadOnlySpan<byte> data) => ecdsa.SignData(data, HashAlgorithmName.SHA256);

    /// <summary>Whether <paramref name="signature"/> is <paramref name="publicKey"/>'s over <paramref name="data"/>;
    /// a malformed key or signature is just not valid.</summary>
    public static bool Verify(ReadOnlySpan<byte> publicKey, ReadOnlySpan<byte> data, ReadOnlySpan<byte> signature)
    {
        using var ecdsa = ECDsa.Create();
        try
        {
            ecdsa.ImportSubjectPublicKeyInfo(publicKey, out _);
            return ecdsa.VerifyData(data, signature, HashAlgorithmName.SHA256);
        }
        catch (CryptographicException)
        {
            return false;
        }
    }

    public override string ToString() => "OperatorKey(hidden)";

    public void Dispose() => ecdsa.Dispose();
}
