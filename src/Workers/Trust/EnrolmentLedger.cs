using System.Text.Json;
using SEmigrate.Sealing;

namespace SEmigrate.Workers.Trust;

/// <summary>The operator's own record of the enrolments it made and revoked, kept beside its key
/// (KEYFILE.enrolments.json, 0600), outside PostgreSQL: an enrolment the database holds is taken only if
/// it is the last one the operator made for that host, so the database's owner can neither restore an
/// older key of a host (a rolled-back enrolment, still signed) nor bring back a revoked host. A host
/// enrolled from another copy of the key (no record here) is checked by its signature alone.</summary>
public static class EnrolmentLedger
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    /// <summary>One host's last enrolment in one database schema: when, the key's fingerprint, and whether it was revoked since.</summary>
    private sealed record Entry(DateTimeOffset At, string Key, bool Revoked);

    /// <summary>Why <paramref name="e"/> is not the host's enrolment as the operator last made it; null when it is (or there is no record).</summary>
    public static string? Problem(OperatorKey key, string schema, HostEnrolment e)
    {
        if (PathOf(key) is not { } path || !Read(path).TryGetValue(Id(schema, e.Id), out var last))
        {
            return null;
        }
        return last.Revoked ? $"host {e.Id} was revoked (`semigrate host forget`): its enrolment in the database was put back"
            : last.At != e.At || last.Key != HostKeyPair.Fingerprint(e.HostKey)
                ? $"the enrolment of host {e.Id} in the database (key {HostKeyPair.Fingerprint(e.HostKey)}, {e.At:u}) is not the last the operator made (key {last.Key}, {last.At:u}): rolled back"
                : null;
    }

    public static void Enrolled(OperatorKey key, string schema, HostEnrolment e) =>
        Update(key, entries => entries[Id(schema, e.Id)] = new Entry(e.At, HostKeyPair.Fingerprint(e.HostKey), false));

    /// <summary>The host may never be taken again under this schema (until enrolled anew).</summary>
    public static void Revoked(OperatorKey key, string schema, string host) =>
        Update(key, entries => entries[Id(schema, host)] = new Entry(DateTimeOffset.UtcNow, "", true));

    /// <summary>Hosts gone for good with their keys (a demo's): no record of them is kept.</summary>
    public static void Forget(OperatorKey key, string schema, IEnumerable<string> hosts) => Update(key, entries =>
    {
        foreach (var host in hosts)
        {
            entries.Remove(Id(schema, host));
        }
    });

    private static string Id(string schema, string host) => $"{schema}/{host}";

    private static string? PathOf(OperatorKey key) => key.File is null ? null : key.File + ".enrolments.json";

    private static Dictionary<string, Entry> Read(string path) =>
        File.Exists(path) ? JsonSerializer.Deserialize<Dictionary<string, Entry>>(File.ReadAllBytes(path), Json) ?? [] : [];

    /// <summary>Read, changed and written whole under a lock, so operators' commands running at once each keep their change.</summary>
    private static void Update(OperatorKey key, Action<Dictionary<string, Entry>> change)
    {
        if (PathOf(key) is not { } path)
        {
            return;
        }
        using var held = Lock(path + ".lock");
        var entries = Read(path);
        change(entries);
        PrivateFile.Write(path, JsonSerializer.SerializeToUtf8Bytes(entries, Json), overwrite: true);
    }

    private static FileStream Lock(string path)
    {
        for (var attempt = 0; ; attempt++)
        {
            try
            {
                // FileShare.None takes an exclusive lock on the file (flock) for as long as it is open.
                return new FileStream(path, new FileStreamOptions
                {
                    Mode = FileMode.OpenOrCreate, Access = FileAccess.ReadWrite, Share = FileShare.None,
                    UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
                });
            }
            catch (IOException) when (attempt < 500)
            {
                Thread.Sleep(20);
            }
        }
    }
}
