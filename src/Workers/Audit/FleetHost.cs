using Marten.Events.Aggregation;
using SEmigrate.Contracts.Audit;

namespace SEmigrate.Workers.Audit;

/// <summary>A host as `semigrate fleet` shows it: its last report (<see cref="HostSeen"/>) and when it first
/// reported. Its id is the host's stream (HostStreams).</summary>
public sealed record FleetHost(Guid Id, string Host, IReadOnlyList<string> Roles, long CapacityPages, long UsedPages, IReadOnlyList<GuestSeen> Guests,
    IReadOnlyList<VmSeen> Vms, DateTimeOffset FirstSeen, DateTimeOffset LastSeen, IReadOnlyDictionary<string, long>? RefusedRequests = null);

/// <summary>Builds <see cref="FleetHost"/> from a host's stream, inline.</summary>
public sealed class FleetHostProjection : SingleStreamProjection<FleetHost, Guid>
{
    public static FleetHost Create(HostSeen e) => new(HostStreams.Of(e.Host), e.Host, e.Roles, e.CapacityPages, e.UsedPages, e.Guests, e.Vms, e.At, e.At, e.RefusedRequests);

    public static FleetHost Apply(HostSeen e, FleetHost h) =>
        h with { Roles = e.Roles, CapacityPages = e.CapacityPages, UsedPages = e.UsedPages, Guests = e.Guests, Vms = e.Vms, LastSeen = e.At, RefusedRequests = e.RefusedRequests };
}
