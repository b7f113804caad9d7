using System.Security.Cryptography;
using System.Text;

namespace SEmigrate.Contracts.Audit;

/// <summary>A host worker's report, when it starts and every Fleet:ReportSeconds after: its roles, its
/// memory server's room, the guests a source keeps and the VMs a main host took over. Appended to the
/// host's own stream (<see cref="HostStreams"/>); the fleet inventory is built from these and from the
/// migrations' streams. <paramref name="RefusedRequests"/>: the requests its memory server refused since it
/// started, by error (security: a count, so that a flood of bad requests cannot flood the trail).</summary>
public sealed record HostSeen(string Host, IReadOnlyList<string> Roles, long CapacityPages, long UsedPages, IReadOnlyList<GuestSeen> Guests, IReadOnlyList<VmSeen> Vms,
    DateTimeOffset At, IReadOnlyDictionary<string, long>? RefusedRequests = null) : IHostEvent
{
    string IHostEvent.RaisedBy => Host;
}

/// <summary>A guest in a source's guests folder, <paramref name="Pages"/> 4 KiB pages of memory: running (its
/// RAM a file the source reads) or a memory dump. <paramref name="HandOverPages"/>: what its hand-over stores
/// at a main host besides its pages, at most (0: not reported).</summary>
public sealed record GuestSeen(string Name, long Pages, bool Running, long HandOverPages = 0);

/// <summary>A VM a main host took over (by <paramref name="MigrationId"/>): its pages here and at sub-hosts;
/// a running guest's <paramref name="Guest"/> name, by which it can be migrated on from there.</summary>
public sealed record VmSeen(Guid Vm, Guid MigrationId, long LocalPages, long RemotePages, bool Running, string? Guest = null);

public static class HostStreams
{
    /// <summary>The stream of a host's reports: a GUID made from its name (the same on every host).</summary>
    public static Guid Of(string host)
    {
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes($"semigrate-host|{host}"));
        return new Guid(hash.AsSpan(0, 16));
    }
}
