using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using JasperFx.Events;
using Marten;

namespace SEmigrate.Workers.Audit;

/// <summary>Every event of a stream carries, in its headers, the hash of the event before it and its own:
/// the SHA-256 of that previous hash, its type and its content; and the auditor's seal over the stream,
/// its version and that hash (<see cref="AuditSeal"/>). An event edited or deleted in the database no
/// longer links, and a chain re-hashed after an edit no longer matches its seals: <see cref="Verify"/>
/// names the first event that does not hold. Who raised an event (the host or control plane that
/// signed it, <see cref="EventSignatures"/>) is kept beside it.</summary>
public static class AuditChain
{
    public const string PreviousHeader = "prev";
    public const string HashHeader = "hash";
    public const string SealerHeader = "sealer";
    public const string SealHeader = "seal";
    public const string SignerHeader = "signer";

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    /// <summary>Appends <paramref name="e"/> to the stream in <paramref name="session"/>, chained to its last
    /// event, sealed, and expecting no other append before this session is saved (else saving fails with a
    /// concurrency error: the caller tries again). Returns the event's version and hash: once saved, the
    /// caller keeps them as the stream's head (<see cref="AuditSeal.RecordHead"/>).</summary>
    public static async Task<(long Version, string Hash)> AppendAsync(IDocumentSession session, AuditSeal seal, Guid stream, object e, string? signer, CancellationToken ct)
    {
        var last = await session.Events.QueryAllRawEvents().Where(x => x.StreamId == stream).OrderByDescending(x => x.Version).FirstOrDefaultAsync(ct);
        var previous = last is null ? "" : Header(last, HashHeader) ?? "";
        var (version, hash) = ((last?.Version ?? 0) + 1, Link(previous, e));
        session.SetHeader(PreviousHeader, previous);
        session.SetHeader(HashHeader, hash);
        session.SetHeader(SealerHeader, seal.Fingerprint ?? throw new InvalidOperationException("only an auditor (with its key) appends to the audit trail"));
        session.SetHeader(SealHeader, seal.Seal(stream, version, hash, signer));
        if (signer is not null)
        {
            session.SetHeader(SignerHeader, signer);
        }
        session.Events.Append(stream, version, e);
        return (version, hash);
    }

    /// <summary>The first event (in version order) whose links or seal do not hold, and why; null if every
    /// one does. Seals are checked when <paramref name="seal"/> can check any.</summary>
    public static (long Version, string Type, string Problem)? Verify(IReadOnlyList<IEvent> events, AuditSeal? seal = null)
    {
        var previous = "";
        long expected = 1;
        foreach (var e in events.OrderBy(x => x.Version))
        {
            var type = e.Data.GetType().Name;
            if (e.Version != expected)
            {
                return (e.Version, type, $"event {expected} is missing (deleted?)");
            }
            if (Header(e, PreviousHeader) is not { } linked || Header(e, HashHeader) is not { } hash)
            {
                return (e.Version, type, "not chained (no hash in its headers)");
            }
            if (linked != previous)
            {
                return (e.Version, type, "chained to another event than the one before it (an event before it was deleted or changed)");
            }
            if (hash != Link(previous, e.Data))
            {
                return (e.Version, type, "its content is not what was hashed when it was recorded (edited)");
            }
            if (seal is { CanCheck: true } && seal.Problem(e.StreamId, e.Version, hash, e.Headers) is { } unsealed)
            {
                return (e.Version, type, unsealed);
            }
            (previous, expected) = (hash, expected + 1);
        }
        return null;
    }

    /// <summary>The event as hashed and signed: its type's name and its JSON.</summary>
    public static string Content(object e) => $"{e.GetType().Name}\n{JsonSerializer.Serialize(e, e.GetType(), Json)}";

    /// <summary>The hash of <paramref name="e"/> chained to <paramref name="previous"/>.</summary>
    public static string Link(string previous, object e) => Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes($"{previous}\n{Content(e)}")));

    public static string? Header(IEvent e, string key) => e.Headers is { } h && h.TryGetValue(key, out var v) ? v?.ToString() : null;
}
