using System.Globalization;
using System.Text;
using SEmigrate.Sealing;
using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers.Audit;

/// <summary>What anchors the audit trail outside PostgreSQL. The auditor's key (Audit:KeyFile, where an
/// orchestrator runs) seals each event appended: it signs the stream, the version and the chain's hash
/// there, so whoever owns the database can neither edit an event nor re-hash the chain after it without
/// the seal failing. The last event appended to each stream is also kept in Audit:HeadsFolder, so a
/// stream cut short (or rolled back to an earlier, still sealed, state) shows where that folder is.</summary>
public sealed class AuditSeal : IDisposable
{
    private readonly OperatorKey? key;
    private readonly Dictionary<string, byte[]> trusted = new(StringComparer.Ordinal);
    private readonly string heads;
    private readonly string schema;

    private AuditSeal(OperatorKey? key, IEnumerable<byte[]> trustedKeys, string heads, string schema)
    {
        (this.key, this.schema) = (key, schema);
        foreach (var k in key is null ? trustedKeys : trustedKeys.Append(key.PublicKey))
        {
            trusted[HostKeyPair.Fingerprint(k)] = k;
        }
        this.heads = heads;
    }

    /// <summary>An orchestrator's: it seals (the key made now if there is none).</summary>
    public static AuditSeal ForAuditor(AuditOptions o, string schema)
    {
        OperatorKey.Create(o.KeyFile);
        return new(OperatorKey.Load(o.KeyFile), TrustedKeys(o), HeadsOf(o, schema), schema);
    }

    /// <summary>An audit's: it checks seals with the keys it trusts (this machine's auditor key, when there is one).</summary>
    public static AuditSeal ForReader(AuditOptions o, string schema)
    {
        if (!File.Exists(o.KeyFile))
        {
            return new(null, TrustedKeys(o), HeadsOf(o, schema), schema);
        }
        using var own = OperatorKey.Load(o.KeyFile); // its public half only is kept: a reader seals nothing
        return new(null, TrustedKeys(o).Append(own.PublicKey), HeadsOf(o, schema), schema);
    }

    /// <summary>This auditor's key's fingerprint (what a seal names); null for a reader without a key.</summary>
    public string? Fingerprint => key is null ? null : HostKeyPair.Fingerprint(key.PublicKey);

    /// <summary>Whether any seal can be checked here.</summary>
    public bool CanCheck => trusted.Count > 0;

    /// <summary>The auditor's signature over <paramref name="data"/> (the control plane signs the events it sends with it).</summary>
    public byte[] Sign(byte[] data) => (key ?? throw new InvalidOperationException("this process has no auditor key")).Sign(data);

    /// <summary>Whether the key with <paramref name="fingerprint"/> is trusted and signed <paramref name="data"/>.</summary>
    public bool Trusts(string? fingerprint, byte[] data, byte[] signature) =>
        fingerprint is not null && trusted.TryGetValue(fingerprint, out var publicKey) && OperatorKey.Verify(publicKey, data, signature);

    /// <summary>The seal of the event at <paramref name="version"/> of <paramref name="stream"/>, chained to
    /// <paramref name="hash"/>, raised by <paramref name="signer"/> (none: the orchestrator's own journal).</summary>
    public string Seal(Guid stream, long version, string hash, string? signer) => Convert.ToBase64String(Sign(Statement(stream, version, hash, signer)));

    /// <summary>Why the event's seal (in its <paramref name="headers"/>) does not hold; null when a trusted key sealed it.</summary>
    public string? Problem(Guid stream, long version, string hash, IDictionary<string, object>? headers)
    {
        string? Header(string key) => headers is not null && headers.TryGetValue(key, out var v) ? v?.ToString() : null;
        var (sealer, seal) = (Header(AuditChain.SealerHeader), Header(AuditChain.SealHeader));
        if (sealer is null || seal is null)
        {
            return "not sealed by an auditor (written into the database, not appended by one)";
        }
        if (!trusted.ContainsKey(sealer))
        {
            return $"sealed by key {sealer}, which is not a trusted auditor's (Audit:KeyFile, Audit:TrustedKeys)";
        }
        var bytes = new byte[seal.Length];
        return Convert.TryFromBase64String(seal, bytes, out var n) && Trusts(sealer, Statement(stream, version, hash, Header(AuditChain.SignerHeader)), bytes[..n]) ? null
            : "its seal does not match (the event, who raised it, or the chain before it was rewritten; or it was sealed for another schema)";
    }

    /// <summary>Keeps <paramref name="version"/> as the stream's head, unless a later one is kept already;
    /// written aside, flushed to disk, then moved into place (a crash leaves the old head or the new one).</summary>
    public void RecordHead(Guid stream, long version, string hash)
    {
        if (HeadOf(stream) is { } kept && kept.Version >= version)
        {
            return;
        }
        Directory.CreateDirectory(heads);
        var path = Path.Combine(heads, stream.ToString("N"));
        var temporary = $"{path}.{Environment.ProcessId}.{Environment.CurrentManagedThreadId}.tmp";
        using (var file = new FileStream(temporary, FileMode.Create, FileAccess.Write))
        {
            file.Write(Encoding.ASCII.GetBytes(string.Create(CultureInfo.InvariantCulture, $"{version} {hash}\n")));
            file.Flush(flushToDisk: true);
        }
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>The last event an auditor here appended to <paramref name="stream"/>; null when none is kept
    /// here (or what is kept does not parse: the next append writes it anew).</summary>
    public (long Version, string Hash)? HeadOf(Guid stream)
    {
        var path = Path.Combine(heads, stream.ToString("N"));
        var parts = File.Exists(path) ? File.ReadAllText(path).Split(' ', 2, StringSplitOptions.TrimEntries) : [];
        return parts.Length == 2 && long.TryParse(parts[0], CultureInfo.InvariantCulture, out var version) ? (version, parts[1]) : null;
    }

    public void Dispose() => key?.Dispose();

    /// <summary>What a seal signs: the schema (so a stream copied from another deployment or a test does not
    /// pass), the stream, the version, the chain's hash there and who raised the event.</summary>
    private byte[] Statement(Guid stream, long version, string hash, string? signer) =>
        Encoding.UTF8.GetBytes(string.Create(CultureInfo.InvariantCulture, $"SEmigrate audit chain head v2\n{schema}\n{stream:N}\n{version}\n{hash}\n{signer}"));

    private static string HeadsOf(AuditOptions o, string schema) => Path.Combine(o.HeadsFolder, schema);

    private static IEnumerable<byte[]> TrustedKeys(AuditOptions o) => o.TrustedKeys.Select(k =>
    {
        var bytes = new byte[k.Length];
        return Convert.TryFromBase64String(k.Trim(), bytes, out var n) ? bytes[..n]
            : throw new InvalidOperationException("Audit:TrustedKeys holds a value that is not base64 (an auditor's public key)");
    });
}
