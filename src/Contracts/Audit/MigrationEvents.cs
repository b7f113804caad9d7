using System.Text.Json.Serialization;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Contracts.Audit;

/// <summary>A migration's lifecycle event: published with MassTransit, appended to the migration's
/// Marten stream (stream id = MigrationId). The JSON type names let one workflow activity carry any
/// of them.</summary>
[JsonPolymorphic(TypeDiscriminatorPropertyName = "$event")]
[JsonDerivedType(typeof(MigrationRequested), nameof(MigrationRequested))]
[JsonDerivedType(typeof(GuestIntrospected), nameof(GuestIntrospected))]
[JsonDerivedType(typeof(PagesClassified), nameof(PagesClassified))]
[JsonDerivedType(typeof(PagesPlaced), nameof(PagesPlaced))]
[JsonDerivedType(typeof(PagingServersStarted), nameof(PagingServersStarted))]
[JsonDerivedType(typeof(DestinationTransferred), nameof(DestinationTransferred))]
[JsonDerivedType(typeof(DestinationLost), nameof(DestinationLost))]
[JsonDerivedType(typeof(MigrationSwitchedOver), nameof(MigrationSwitchedOver))]
[JsonDerivedType(typeof(MigrationCompensated), nameof(MigrationCompensated))]
[JsonDerivedType(typeof(MigrationRefused), nameof(MigrationRefused))]
[JsonDerivedType(typeof(PageCheckFailed), nameof(PageCheckFailed))]
[JsonDerivedType(typeof(PagesUnavailable), nameof(PagesUnavailable))]
[JsonDerivedType(typeof(StepDenied), nameof(StepDenied))]
[JsonDerivedType(typeof(MigratedVmStopped), nameof(MigratedVmStopped))]
[JsonDerivedType(typeof(MigrationAccepted), nameof(MigrationAccepted))]
[JsonDerivedType(typeof(StepScheduled), nameof(StepScheduled))]
[JsonDerivedType(typeof(StepCompleted), nameof(StepCompleted))]
[JsonDerivedType(typeof(StepFailed), nameof(StepFailed))]
[JsonDerivedType(typeof(CancelRequested), nameof(CancelRequested))]
[JsonDerivedType(typeof(ProcedureEnded), nameof(ProcedureEnded))]
public interface IMigrationEvent
{
    Guid MigrationId { get; }

    DateTimeOffset At { get; }
}

public sealed record MigrationRequested(Guid MigrationId, Guid Vm, string Source, string Main, IReadOnlyList<string> SubHosts, string Mode, DateTimeOffset At) : IMigrationEvent;

public sealed record GuestIntrospected(Guid MigrationId, int Tasks, int Processes, IReadOnlyList<string> Diagnostics, DateTimeOffset At) : IMigrationEvent;

public sealed record PagesClassified(Guid MigrationId, long Zero, long Plain, long Sealed, DateTimeOffset At) : IMigrationEvent;

public sealed record PagesPlaced(Guid MigrationId, IReadOnlyList<Assignment> Assignments, DateTimeOffset At) : IMigrationEvent;

public sealed record PagingServersStarted(Guid MigrationId, IReadOnlyList<string> Hosts, DateTimeOffset At) : IMigrationEvent;

/// <summary>A destination has its share: <paramref name="Classified"/> its pages by class at the source,
/// <paramref name="Sent"/> by the class they travelled as (Zero: did not travel), <paramref name="Epochs"/>
/// the key epochs its attempts used (never a key).</summary>
public sealed record DestinationTransferred(Guid MigrationId, string Host, long Pages, long Bytes, long ResentPages, long ResentBytes, int Attempts, DateTimeOffset At,
    PageCounts? Classified = null, PageCounts? Sent = null, IReadOnlyList<uint>? Epochs = null) : IMigrationEvent;

/// <summary>A destination lost the VM's pages mid-migration (its memory server restarted): paging starts
/// there again and its share is sent again, round <paramref name="Round"/> (2 the first time).</summary>
public sealed record DestinationLost(Guid MigrationId, string Host, int Round, string Reason, DateTimeOffset At) : IMigrationEvent;

/// <summary>The main host took the VM over; the manifest's SHA-256 as the source sent it and as the main host
/// opened it, and the key epoch the hand-over sealed it under.</summary>
public sealed record MigrationSwitchedOver(Guid MigrationId, string Main, long LocalPages, long RemotePages, DateTimeOffset At,
    string? ManifestSent = null, string? ManifestReceived = null, uint? ManifestEpoch = null) : IMigrationEvent;

public sealed record MigrationCompensated(Guid MigrationId, string Reason, IReadOnlyList<string> ReleasedHosts, DateTimeOffset At) : IMigrationEvent;

public sealed record MigrationRefused(Guid MigrationId, string Reason, DateTimeOffset At) : IMigrationEvent;

/// <summary>A security event: a page that <paramref name="Host"/> returned to the main host failed its
/// check (altered, swapped, replayed, relabelled, or missing), so it was not used. Names the page, never
/// its content.</summary>
public sealed record PageCheckFailed(Guid MigrationId, Guid Vm, string Main, string Host, long Pfn, string Problem, DateTimeOffset At) : ISecurityEvent, IHostEvent
{
    string IHostEvent.RaisedBy => Main;
}

/// <summary>A security event: <paramref name="Host"/> refused a step (<paramref name="Step"/>) that the
/// migration's signed request does not allow: forged, altered, replayed or expired. Nothing changed there.</summary>
public sealed record StepDenied(Guid MigrationId, Guid Vm, string Host, string Step, string Problem, DateTimeOffset At) : ISecurityEvent, IHostEvent
{
    string IHostEvent.RaisedBy => Host;
}

/// <summary>An event that says somebody tried what they may not (the audit and status count them).</summary>
public interface ISecurityEvent : IMigrationEvent;

/// <summary>An event a host raises itself (<see cref="RaisedBy"/>): the auditor takes it only from that
/// host's broker user, or the control plane's (AuditSenders). Not part of the wire form.</summary>
public interface IHostEvent
{
    string RaisedBy { get; }
}

/// <summary>An availability event: <paramref name="Host"/> did not serve pages the main host needed (from
/// <paramref name="Pfn"/>, <paramref name="Pages"/> of them) for a VM that runs there, so the guest's read
/// failed (QEMU stops a guest whose RAM cannot be read). At most one per host every 10 s.</summary>
public sealed record PagesUnavailable(Guid MigrationId, Guid Vm, string Main, string Host, long Pfn, int Pages, string Problem, DateTimeOffset At) : IMigrationEvent, IHostEvent
{
    string IHostEvent.RaisedBy => Main;
}

/// <summary>The VM a migration brought to <paramref name="Main"/> was stopped there and its pages released
/// at every host (<paramref name="ReleasedPages"/> in all).</summary>
public sealed record MigratedVmStopped(Guid MigrationId, Guid Vm, string Main, IReadOnlyList<string> ReleasedHosts, long ReleasedPages, DateTimeOffset At)
    : IMigrationEvent, IHostEvent
{
    string IHostEvent.RaisedBy => Main;
}

/// <summary>An event as a workflow activity's input: the property's declared interface type makes the
/// JSON carry the event's type name, so the activity gets the same event back. <paramref name="Sequence"/>:
/// its place among the migration's recorded events (1 on; 0 in histories from before it was counted),
/// from which its message id is made, so a retried activity records it once. <paramref name="Request"/>: the
/// migration's signed request, which the activity checks before it signs the event (null in histories from
/// before it was carried).</summary>
public sealed record RecordEvent(IMigrationEvent Event, long Sequence = 0, Migration.MigrationRequest? Request = null)
{
    /// <summary>The same for every try of the activity: a hash of migration and sequence, shaped as a
    /// version-5-style GUID; null when there is no sequence.</summary>
    [JsonIgnore]
    public Guid? MessageId
    {
        get
        {
            if (Sequence <= 0)
            {
                return null;
            }
            var hash = System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"semigrate-event|{Event.MigrationId:N}|{Sequence}"));
            hash[6] = (byte)((hash[6] & 0x0f) | 0x50);
            hash[8] = (byte)((hash[8] & 0x3f) | 0x80);
            return new Guid(hash.AsSpan(0, 16));
        }
    }
}

/// <summary>Paging of a running VM at its main host over one interval (<paramref name="From"/> to
/// <paramref name="At"/>): pages and bytes in and out per host (a host is a sub-host, or the main host
/// for pages it sealed into its own store), page-in request latency percentiles, and the guest's
/// resident memory against its budget (the main host's share), and what the guest's QEMU read from and
/// wrote back to its RAM file in the interval (its page faults and the kernel's write-backs, bytes).
/// Appended to the VM's own stream (stream id = <paramref name="Vm"/>); never page content or keys.</summary>
public sealed record VmPaged(
    Guid MigrationId, Guid Vm, string Main, IReadOnlyList<HostPaging> Hosts, double PageInP50Ms, double PageInP99Ms,
    long ResidentPages, long PeakResidentPages, long BudgetPages, long FaultedBytes, long WrittenBackBytes, DateTimeOffset From, DateTimeOffset At) : IHostEvent
{
    string IHostEvent.RaisedBy => Main;
}

/// <summary>One host's paging in a <see cref="VmPaged"/> interval.</summary>
public sealed record HostPaging(string Host, long PagesIn, long BytesIn, long PagesOut, long BytesOut);
