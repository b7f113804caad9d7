using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using JasperFx.Events;
using Marten;

namespace SEmigrate.Workers.Audit;

/// <summary>Every event of a migration's stream carries, in its headers, the hash of the event before it
/// and its own: the SHA-256 of that previous hash, its type and its content. An event edited or
/// deleted in the database no longer links: <see cref="Verify"/> names the first that does not.</summary>
public static class AuditChain
{
    public const string PreviousHeader = "prev";
    public const string HashHeader = "hash";

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    /// <summary>Appends <paramref name="e"/> to the stream in <paramref name="session"/>, chained to its last
    /// event and expecting no other append before this session is saved (else saving fails with a
    /// concurrency error: the caller tries again).</summary>
    public static async Task AppendAsync(IDocumentSession session, Guid stream, object e, CancellationToken ct)
    {
        var last = await session.Events.QueryAllRawEvents().Where(x => x.StreamId == stream).OrderByDescending(x => x.Version).FirstOrDefaultAsync(ct);
        var previous = last is null ? "" : Header(last, HashHeader) ?? "";
        session.SetHeader(PreviousHeader, previous);
        session.SetHeader(HashHeader, Link(previous, e));
        session.Events.Append(stream, (last?.Version ?? 0) + 1, e);
    }

    /// <summary>The first event (in version order) whose links do not hold, and why; null if every one does.</summary>
    public static (long Version, string Type, string Problem)? Verify(IReadOnlyList<IEvent> events)
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
            (previous, expected) = (hash, expected + 1);
        }
        return null;
    }

    private static string Link(string previous, object e) =>
        Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes($"{previous}\n{e.GetType().Name}\n{JsonSerializer.Serialize(e, e.GetType(), Json)}")));

    private static string? Header(IEvent e, string key) => e.Headers is { } h && h.TryGetValue(key, out var v) ? v?.ToString() : null;
}
