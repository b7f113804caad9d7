using Marten.Events.Aggregation;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workers.Audit;

/// <summary>A migration as `semigrate status` shows it: the read model of its event stream. <paramref name="Open"/>:
/// the embedded engine took it on and its procedure has not returned (what a restarted orchestrator resumes).</summary>
public sealed record MigrationSummary(
    Guid Id, Guid Vm, string Source, string Main, IReadOnlyList<string> SubHosts, string Mode, MigrationState State,
    DateTimeOffset RequestedAt, DateTimeOffset UpdatedAt, PageCounts? Pages, IReadOnlyList<DestinationTransferred> Transfers, string? Reason,
    int SecurityEvents = 0, int AvailabilityEvents = 0, DateTimeOffset? StoppedAt = null, bool Open = false);

/// <summary>Builds <see cref="MigrationSummary"/> from one migration's stream, inline: it is updated in
/// the same transaction as the events it reads.</summary>
public sealed class MigrationSummaryProjection : SingleStreamProjection<MigrationSummary, Guid>
{
    public static MigrationSummary Create(MigrationRequested e) =>
        new(e.MigrationId, e.Vm, e.Source, e.Main, e.SubHosts, e.Mode, MigrationState.Requested, e.At, e.At, null, [], null);

    /// <summary>The embedded engine's streams start with the request it accepted: a migration is known
    /// (and resumable) from then on, even if its orchestrator dies before anything else is recorded.</summary>
    public static MigrationSummary Create(MigrationAccepted e) =>
        new(e.MigrationId, e.Request.Vm, e.Request.Source, e.Request.Main.Host, [.. e.Request.SubHosts.Select(s => s.Host)], e.Request.Mode.ToWireName(),
            MigrationState.Requested, e.At, e.At, null, [], null, Open: true);

    public static MigrationSummary Apply(MigrationRequested e, MigrationSummary s) => s with { UpdatedAt = e.At };

    public static MigrationSummary Apply(ProcedureEnded e, MigrationSummary s) => s with { Open = false, UpdatedAt = e.At };

    public static MigrationSummary Apply(GuestIntrospected e, MigrationSummary s) => Moved(e, s);

    public static MigrationSummary Apply(PagesClassified e, MigrationSummary s) => s with { Pages = new PageCounts(e.Zero, e.Plain, e.Sealed), UpdatedAt = e.At };

    public static MigrationSummary Apply(PagesPlaced e, MigrationSummary s) => Moved(e, s);

    public static MigrationSummary Apply(PagingServersStarted e, MigrationSummary s) => Moved(e, s);

    public static MigrationSummary Apply(DestinationTransferred e, MigrationSummary s) => s with { Transfers = [.. s.Transfers, e], UpdatedAt = e.At };

    public static MigrationSummary Apply(MigrationSwitchedOver e, MigrationSummary s) => Moved(e, s);

    public static MigrationSummary Apply(MigrationCompensated e, MigrationSummary s) => Moved(e, s) with { Reason = e.Reason };

    public static MigrationSummary Apply(MigrationRefused e, MigrationSummary s) => Moved(e, s) with { Reason = e.Reason };

    public static MigrationSummary Apply(PageCheckFailed e, MigrationSummary s) => s with { SecurityEvents = s.SecurityEvents + 1, UpdatedAt = e.At };

    /// <summary>A step refused for a migration nobody requested (a forged one) still shows, as a security event.</summary>
    public static MigrationSummary Create(StepDenied e) =>
        new(e.MigrationId, e.Vm, "", "", [], "", MigrationState.Refused, e.At, e.At, null, [], $"{e.Step} refused at {e.Host}: {e.Problem}", SecurityEvents: 1);

    public static MigrationSummary Apply(StepDenied e, MigrationSummary s) => s with { SecurityEvents = s.SecurityEvents + 1, UpdatedAt = e.At };

    public static MigrationSummary Apply(PagesUnavailable e, MigrationSummary s) => s with { AvailabilityEvents = s.AvailabilityEvents + 1, UpdatedAt = e.At };

    public static MigrationSummary Apply(MigratedVmStopped e, MigrationSummary s) => s with { StoppedAt = e.At, UpdatedAt = e.At };

    private static MigrationSummary Moved(IMigrationEvent e, MigrationSummary s) => s with { State = MigrationStates.After(e, s.State) ?? s.State, UpdatedAt = e.At };
}
